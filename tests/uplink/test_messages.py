"""XML packets: build → parse round trips, the field's variant forms, and refused DTDs/entities."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.uplink.messages import (
    Ack,
    Common,
    FunctionValue,
    Heartbeat,
    LoginChallenge,
    LoginDigest,
    LoginRequest,
    LoginResult,
    Message,
    MessageError,
    MeterRecord,
    PeriodAck,
    PeriodConfig,
    Query,
    Report,
    ServerTime,
    Unknown,
    build,
    format_value,
    parse,
)
from collector.uplink.variant import DEFAULT, Variant

C = Common("330100A001", "01")
T = datetime(2024, 5, 23, 18, 30)
METERS = (
    MeterRecord(
        "1",
        (FunctionValue("1", "01A00", 13362.2), FunctionValue("8", "01A00", None)),
        name="1#变压器",
        conn="conn",
    ),
    MeterRecord("2", (FunctionValue("1", "02000", 12.5, sample_time=T),)),
)

SIMPLE: list[Message] = [
    LoginRequest(),
    LoginChallenge("46217562"),
    LoginDigest("eb6c95f789d5a6872b89a7806c6c71ed"),
    LoginResult(True, T, "pass"),
    LoginResult(False, None, "fail"),
    Heartbeat(),
    ServerTime(T),
    Query(),
    PeriodConfig(15),
    PeriodAck(),
    Ack("continuous_ack"),
    Ack("data_ack", "42"),
    Ack("continuous_ack", "42"),
    Ack("report_ack"),
    Ack("report_ack", passed=False),
    Ack("record_arrive"),
    Ack("ack", time=T),
]


@pytest.mark.parametrize("variant", [DEFAULT, Variant(type_style="element", id_tag="project_id", encoding="gbk")])
@pytest.mark.parametrize("message", SIMPLE, ids=lambda m: type(m).__name__)
def test_simple_round_trip(message: Message, variant: Variant) -> None:
    packet = parse(build(message, C, variant), variant)
    assert packet.common == C
    assert packet.message == message


@pytest.mark.parametrize("parser_tag", ["parser", "parse"])
def test_report_and_continuous(parser_tag: str) -> None:
    v = Variant(parser_tag=parser_tag)  # type: ignore[arg-type]
    text = build(Report("continuous", "17", T, METERS, total=3, current=2), C, v)
    assert f"<{parser_tag}>yes</{parser_tag}>".encode() in text
    assert b'<function id="8" coding="01A00" error="1" />' in text  # no value: error_fault
    report = parse(text, v).message
    assert isinstance(report, Report)
    assert (report.operation, report.sequence, report.time, report.total, report.current) == (
        "continuous",
        "17",
        T,
        3,
        2,
    )
    assert report.meters[0].name == "1#变压器"
    assert report.meters[0].functions[0] == FunctionValue("1", "01A00", "13362.2", "192")
    assert report.meters[1].functions[0].sample_time == T


def test_declaration_and_encoding() -> None:
    assert build(Heartbeat(), C, DEFAULT).startswith(b'<?xml version="1.0" encoding="UTF-8"?><root>')
    gbk = build(Report("report", "1", T, METERS), C, Variant(encoding="gbk"))
    assert "1#变压器".encode("gbk") in gbk
    assert parse(gbk, DEFAULT).message == parse(gbk, Variant(encoding="gbk")).message
    assert not build(Heartbeat(), C, Variant(xml_declaration=False)).startswith(b"<?xml")


def test_values_are_never_in_exponent_notation() -> None:
    assert [format_value(v) for v in (1e-05, 15321.07, 2.0, 1e20, -0.5)] == [
        "0.00001",
        "15321.07",
        "2",
        "100000000000000000000",
        "-0.5",
    ]
    with pytest.raises(ValueError):
        format_value(float("nan"))


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_value_text_reads_back(value: float) -> None:
    assert float(format_value(value)) == value


HEAD = b"<root><common><building_id>b</building_id><gateway_id>g</gateway_id>"


def test_field_forms() -> None:
    # Q's templates: a newline before the declaration, two <type>s, ack under <root>
    q_result = (
        b'\n<?xml version="1.0" encoding="utf-8" ?>\n'
        b"<root><common><building_id>b</building_id><gateway_id>g</gateway_id>"
        b'<type>result</type><type>time</type></common><id_validate operation="result"><result>pass</result>'
        b"<time>20240523183000</time></id_validate></root>\n"
    )
    packet = parse(q_result, DEFAULT)
    assert packet.message == LoginResult(True, T, "pass") and packet.extra_types == ("time",)
    q_ack = HEAD + b"<type>data_ack</type></common><sequence>9</sequence><result>1</result></root>"
    assert parse(q_ack, DEFAULT).message == Ack("data_ack", "9")
    # B upload.go:83-91
    b_ack = HEAD + b'<type>energy_data</type></common><data operation="report">'
    b_ack += b"<time>20240523183000</time><ack>OK</ack></data></root>"
    assert parse(b_ack, DEFAULT).message == Ack("ack", None, True, T)
    # D's "Register": no id_validate element
    d_reg = HEAD + b"<type>request</type></common></root>"
    assert parse(d_reg, DEFAULT).message == LoginRequest()
    vendor = HEAD + b'<type>reboot</type></common><config operation="reboot"/></root>'
    assert parse(vendor, DEFAULT).message == Unknown("reboot", "config", "reboot")


BOMB = b"""<?xml version="1.0"?><!DOCTYPE root [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>
<root><common><building_id>&b;</building_id><gateway_id>g</gateway_id><type>notify</type></common></root>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE root [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<root><common><building_id>&x;</building_id><gateway_id>g</gateway_id><type>notify</type></common></root>"""


@pytest.mark.parametrize("text", [BOMB, EXTERNAL, b'<!DOCTYPE root SYSTEM "http://example.com/x.dtd"><root/>'])
def test_dtds_and_entities_are_refused(text: bytes) -> None:
    with pytest.raises(MessageError, match="DOCTYPE"):
        parse(text, DEFAULT)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"<root><common>", "not well-formed"),
        (b"<other/>", "not <root>"),
        (b"<root/>", "no <common>"),
        (b"\xff\xfe<root/>", "decode"),
        (
            HEAD + b"<type>time</type></common><heart_beat operation='time'><time>soon</time></heart_beat></root>",
            "not a time",
        ),
    ],
)
def test_bad_texts(text: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        parse(text, DEFAULT)
