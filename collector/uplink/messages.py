"""The XML bodies of the data-centre protocol: one typed message per packet, built and parsed here.

Every packet is ``<root><common><building_id/><gateway_id/><type/></common><ELEMENT operation="…">…
</ELEMENT></root>`` (docs/datacenter.md §XML, with the source of every form). ``build`` writes the
collector's packets (and, for tests/uplink/datacenter.py, the data centre's); ``parse`` reads
either side's and is lenient where the field is inconsistent: it dispatches on the element's
``operation`` and falls back to ``<type>``, accepts ``parser``/``parse``, ``building_id``/``project_id``,
leading whitespace before the declaration (Q's templates), and every report-ack form known.

Safety: parsing goes through expat with a DOCTYPE handler that refuses the document, so no entity
(internal "billion laughs" or external) is ever declared or expanded; the stdlib ElementTree
alone expands internal entities. Text is decoded by us (expat supports no multi-byte encoding but
UTF-8/16): by the declaration's encoding, GB2312/GBK read as GB18030, else the variant's.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from math import isfinite
from typing import Literal
from xml.parsers import expat

from collector.uplink.variant import Variant

TIME_FORMAT = "%Y%m%d%H%M%S"  #: yyyyMMddHHmmss, local time (D, Z, Y, C, A, E; reference §6)
MAX_XML = 4 << 20  #: refuse longer texts before parsing


class MessageError(ValueError):
    """A text that is not one of the protocol's XML packets (the reason names the element)."""


@dataclass(frozen=True, slots=True)
class Common:
    """The ``<common>`` ids: 楼栋编号 assigned by the platform, 采集器编号 chosen by us."""

    building_id: str
    gateway_id: str


# --- id_validate ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """collector → DC: ``<id_validate operation="request"/>``."""


@dataclass(frozen=True, slots=True)
class LoginChallenge:
    """DC → collector: ``<sequence>``, an opaque string (8 digits, a timestamp, a UUID …)."""

    sequence: str


@dataclass(frozen=True, slots=True)
class LoginDigest:
    """collector → DC: ``<md5>``, crypto.login_digest of the challenge."""

    md5: str


@dataclass(frozen=True, slots=True)
class LoginResult:
    """DC → collector: ``<result>pass|fail</result>``, with Q's optional ``<time>``."""

    passed: bool
    time: datetime | None = None
    text: str = ""  #: the result text as received


# --- heart_beat -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """collector → DC: ``<heart_beat operation="notify"/>``."""


@dataclass(frozen=True, slots=True)
class ServerTime:
    """DC → collector: ``<heart_beat operation="time"><time>yyyyMMddHHmmss</time>``."""

    time: datetime


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionValue:
    """One ``<function id coding error [sample_time]>value</function>``."""

    id: str  #: 采集功能编号 (docs/datacenter.md §Function ids)
    coding: str  #: 分类分项 code of the meter, e.g. 01A00
    value: float | str | None  #: None: no value (sent with the variant's error_fault); str: raw text
    error: str | None = None  #: None: the variant's error_ok (or error_fault without a value)
    sample_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """One ``<meter id [name addr tp conn]>`` with its functions."""

    id: str  #: 计量装置编号
    functions: tuple[FunctionValue, ...]
    name: str | None = None
    addr: str | None = None
    tp: str | None = None
    conn: str | None = None  #: conn | disconn (E)


Operation = Literal["report", "continuous", "reply"]


@dataclass(frozen=True, slots=True)
class Report:
    """A ``data`` packet of values: ``report`` (each period), ``continuous`` (断点续传, with
    ``total``/``current``) or ``reply`` (answer to ``query``)."""

    operation: Operation
    sequence: str  #: collector-unique, at most 20 digits (D)
    time: datetime  #: the period the values belong to
    meters: tuple[MeterRecord, ...]
    parsed: bool = True  #: ``<parser>yes</parser>``
    total: int | None = None  #: continuous only: packets in this resend
    current: int | None = None  #: continuous only: 1-based index of this packet


AckForm = Literal["continuous_ack", "data_ack", "report_ack", "record_arrive", "ack"]


@dataclass(frozen=True, slots=True)
class Ack:
    """DC → collector: any of the report/continuous acknowledgements seen in the field."""

    form: AckForm
    sequence: str | None = None  #: when the ack names the packet (Q)
    passed: bool = True  #: False for report_ack "fail", ``<ack>`` other than OK, ``result`` 0
    time: datetime | None = None  #: B's ``<data><time>``


@dataclass(frozen=True, slots=True)
class Query:
    """DC → collector: ``<data operation="query"/>``: collect now, answer with a ``reply``."""


@dataclass(frozen=True, slots=True)
class PeriodConfig:
    """DC → collector: ``<config operation="period"><period>minutes</period>``."""

    minutes: int


@dataclass(frozen=True, slots=True)
class PeriodAck:
    """collector → DC: ``<config operation="period_ack"/>``."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed packet of a type this module does not handle (vendor commands, key updates …)."""

    type: str
    element: str
    operation: str


Message = (
    LoginRequest
    | LoginChallenge
    | LoginDigest
    | LoginResult
    | Heartbeat
    | ServerTime
    | Report
    | Ack
    | Query
    | PeriodConfig
    | PeriodAck
    | Unknown
)


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed packet: its ids, the ``<type>`` text and the message."""

    common: Common
    type: str
    message: Message
    extra_types: tuple[str, ...] = field(default=())  #: further ``<type>`` elements (Q's result)


# --- building ---------------------------------------------------------------------------------


def format_time(t: datetime) -> str:
    return t.strftime(TIME_FORMAT)


def format_value(value: float | str) -> str:
    """Shortest text that reads back as the same float, never in exponent notation."""
    if isinstance(value, str):
        return value
    if not isfinite(value):
        raise ValueError(f"value {value!r} cannot be sent; send None (error_fault) instead")
    text = format(Decimal(repr(float(value))), "f")
    return text[:-2] if text.endswith(".0") else text


def _shape(message: Message) -> tuple[str, str, list[tuple[str, str]]]:
    """(element, operation, simple children) of a message other than a Report."""
    match message:
        case LoginRequest():
            return "id_validate", "request", []
        case LoginChallenge(sequence=s):
            return "id_validate", "sequence", [("sequence", s)]
        case LoginDigest(md5=m):
            return "id_validate", "md5", [("md5", m)]
        case LoginResult(passed=p, time=t):
            kids = [("result", "pass" if p else "fail")]
            return "id_validate", "result", kids + ([("time", format_time(t))] if t else [])
        case Heartbeat():
            return "heart_beat", "notify", []
        case ServerTime(time=t):
            return "heart_beat", "time", [("time", format_time(t))]
        case Query():
            return "data", "query", []
        case PeriodConfig(minutes=n):
            return "config", "period", [("period", str(n))]
        case PeriodAck():
            return "config", "period_ack", []
        case Ack(form="continuous_ack", sequence=seq):
            return "data", "continuous_ack", [("sequence", seq)] if seq else []
        case Ack(form="report_ack", passed=p):
            return "report_config", "report_ack", [("report_ack", "pass" if p else "fail")]
        case Ack(form="record_arrive"):
            return "supcon", "record_arrive", []
        case Ack(form="ack", passed=p, time=t):
            return "data", "report", ([("time", format_time(t))] if t else []) + [("ack", "OK" if p else "ERROR")]
    raise ValueError(f"cannot build {message!r}")  # Unknown, data_ack (built in build())


def build(message: Message, common: Common, variant: Variant) -> bytes:
    """The encoded XML text of a packet (not yet encrypted)."""
    root = ET.Element("root")
    com = ET.SubElement(root, "common")
    ET.SubElement(com, variant.id_tag).text = common.building_id
    ET.SubElement(com, "gateway_id").text = common.gateway_id
    type_el = ET.SubElement(com, "type")
    element: str
    operation: str
    if isinstance(message, Report):
        element, operation = "data", message.operation
        body = ET.SubElement(root, element, operation=operation)
        _report_body(body, message, variant)
    elif isinstance(message, Ack) and message.form == "data_ack":
        # Q src/signals/ack.temp.js: no element, <sequence> and <result> under <root>
        element = operation = "data_ack"
        ET.SubElement(root, "sequence").text = message.sequence or ""
        ET.SubElement(root, "result").text = "1" if message.passed else "0"
    else:
        element, operation, kids = _shape(message)
        body = ET.SubElement(root, element, operation=operation)
        for tag, text in kids:
            ET.SubElement(body, tag).text = text
    type_el.text = element if variant.type_style == "element" and element != "data_ack" else operation
    text = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    if variant.xml_declaration:
        text = f'<?xml version="1.0" encoding="{variant.encoding.upper()}"?>' + text
    return text.encode("gb18030" if variant.encoding == "gbk" else "utf-8")


def _report_body(body: ET.Element, report: Report, variant: Variant) -> None:
    ET.SubElement(body, "sequence").text = report.sequence
    ET.SubElement(body, variant.parser_tag).text = "yes" if report.parsed else "no"
    ET.SubElement(body, "time").text = format_time(report.time)
    if report.operation == "continuous":
        if report.total is None or report.current is None:
            raise ValueError("a continuous packet needs total and current")
        ET.SubElement(body, "total").text = str(report.total)
        ET.SubElement(body, "current").text = str(report.current)
    for meter in report.meters:
        attrs = {"id": meter.id}
        for key in ("name", "addr", "tp", "conn"):
            value = getattr(meter, key)
            if value is not None:
                attrs[key] = value
        m = ET.SubElement(body, "meter", attrs)
        for fn in meter.functions:
            error = fn.error or (variant.error_ok if fn.value is not None else variant.error_fault)
            fattrs = {"id": fn.id, "coding": fn.coding, "error": error}
            if fn.sample_time is not None:
                fattrs["sample_time"] = format_time(fn.sample_time)
            ET.SubElement(m, "function", fattrs).text = "" if fn.value is None else format_value(fn.value)


# --- parsing ----------------------------------------------------------------------------------

_DECL = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _decode(data: bytes, variant: Variant) -> str:
    data = data.lstrip(b" \t\r\n\x00")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    m = _DECL.match(data)
    declared = m.group(1).decode("ascii").lower() if m else variant.encoding
    codec = "gb18030" if declared in ("gb2312", "gbk", "gb18030", "cp936") else declared
    try:
        return data.decode(codec)
    except (LookupError, UnicodeDecodeError) as exc:
        raise MessageError(f"text does not decode as {declared}: {exc}") from None


def _refuse(*_: object) -> int:
    raise MessageError("a DOCTYPE or entity declaration is refused")


def parse_tree(data: bytes, variant: Variant) -> ET.Element:
    """The element tree of one XML text, refusing DTDs and entities (see module doc)."""
    if len(data) > MAX_XML:
        raise MessageError(f"XML text of {len(data)} bytes exceeds {MAX_XML}")
    text = _decode(data, variant)
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate("utf-8")  # we decoded: override the declaration
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(text.encode("utf-8"), True)
    except expat.ExpatError as exc:
        raise MessageError(f"not well-formed XML: {exc}") from None
    return builder.close()


def _text(el: ET.Element | None) -> str:
    return "" if el is None or el.text is None else el.text.strip()


def _child(el: ET.Element, *tags: str) -> ET.Element | None:
    for tag in tags:
        found = el.find(tag)
        if found is not None:
            return found
    return None


def parse_time(text: str, what: str) -> datetime:
    """yyyyMMddHHmmss; X's ``yyyy/MM/dd HH:mm:ss`` is read too."""
    for fmt in (TIME_FORMAT, "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise MessageError(f"{what}: {text!r} is not a time yyyyMMddHHmmss")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MessageError(f"{what}: {text!r} is not a number") from None


def _report(body: ET.Element, operation: Operation) -> Report:
    meters = []
    for m in body.findall("meter"):
        fns = []
        for f in m.findall("function"):
            st = f.get("sample_time")
            raw = _text(f)
            fns.append(
                FunctionValue(
                    id=f.get("id", ""),
                    coding=f.get("coding", ""),
                    value=raw if raw else None,
                    error=f.get("error"),
                    sample_time=parse_time(st, "function sample_time") if st else None,
                )
            )
        meters.append(
            MeterRecord(m.get("id", ""), tuple(fns), m.get("name"), m.get("addr"), m.get("tp"), m.get("conn"))
        )
    total, current = _child(body, "total"), _child(body, "current")
    return Report(
        operation=operation,
        sequence=_text(_child(body, "sequence")),
        time=parse_time(_text(_child(body, "time")), "data time"),
        meters=tuple(meters),
        parsed=_text(_child(body, "parser", "parse")).lower() != "no",
        total=_int(_text(total), "total") if total is not None else None,
        current=_int(_text(current), "current") if current is not None else None,
    )


_ELEMENTS = ("id_validate", "heart_beat", "data", "config", "report_config", "supcon", "energy_data")


def parse(data: bytes, variant: Variant) -> Packet:
    """The packet of a decrypted XML text; MessageError for anything else."""
    root = parse_tree(data, variant)
    if root.tag != "root":
        raise MessageError(f"root element is <{root.tag}>, not <root>")
    com = root.find("common")
    if com is None:
        raise MessageError("no <common> element")
    types = [_text(t) for t in com.findall("type")]
    common = Common(_text(_child(com, "building_id", "project_id")), _text(com.find("gateway_id")))
    body = next((el for el in root if el.tag != "common" and el.get("operation") is not None), None)
    type_text = types[0] if types else ""
    if body is None:
        body = next((el for el in root if el.tag in _ELEMENTS), None)
    element = body.tag if body is not None else ""
    operation = (body.get("operation") or "") if body is not None else ""
    if not operation:
        operation = type_text  # an element without an operation attribute
    message = _message(root, body, element, operation, type_text)
    return Packet(common, type_text, message, tuple(types[1:]))


def _message(root: ET.Element, body: ET.Element | None, element: str, operation: str, type_text: str) -> Message:
    if body is None:
        if type_text.endswith("_ack") and root.find("sequence") is not None:  # Q's data_ack
            form: AckForm = "continuous_ack" if type_text == "continuous_ack" else "data_ack"
            return Ack(form, _text(root.find("sequence")) or None, _text(root.find("result")) != "0")
        if type_text == "request":  # D's "Register": no id_validate element at all
            return LoginRequest()
        if type_text == "notify":
            return Heartbeat()
        return Unknown(type_text, "", "")
    b = body
    match (element, operation):
        case ("id_validate", "request"):
            return LoginRequest()
        case ("id_validate", "sequence"):
            return LoginChallenge(_text(b.find("sequence")))
        case ("id_validate", "md5"):
            return LoginDigest(_text(b.find("md5")))
        case ("id_validate", "result"):
            result = _text(b.find("result"))
            t = _text(b.find("time"))
            return LoginResult(result.lower() == "pass", parse_time(t, "result time") if t else None, result)
        case ("heart_beat", "notify"):
            return Heartbeat()
        case ("heart_beat", "time"):
            return ServerTime(parse_time(_text(b.find("time")), "heart_beat time"))
        case ("data", "report" | "continuous" | "reply") if b.find("ack") is not None:
            t = _text(b.find("time"))  # B upload.go:83-91: <data operation="report"><time/><ack>OK</ack>
            return Ack("ack", None, _text(b.find("ack")).upper() == "OK", parse_time(t, "ack time") if t else None)
        case ("data", "report" | "continuous" | "reply"):
            return _report(b, operation)
        case ("data", "continuous_ack"):
            return Ack("continuous_ack", _text(b.find("sequence")) or None)
        case ("data", "query"):
            return Query()
        case (_, "report_ack"):
            return Ack("report_ack", None, _text(b.find("report_ack")).lower() != "fail")
        case (_, "record_arrive"):
            return Ack("record_arrive")
        case ("config", "period"):
            return PeriodConfig(_int(_text(b.find("period")), "period"))
        case ("config", "period_ack"):
            return PeriodAck()
    return Unknown(type_text, element, operation)
