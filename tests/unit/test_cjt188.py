"""CJ/T 188 frames: the 901FH read and reply, unit codes, robustness."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cjt188 import frame
from drivers.frame68 import FrameError


def test_read_901f_frame() -> None:
    request = frame.read_request("12345678901234")
    # 68 T=10 address low byte first, C=01, L=03, DI 1F 90 (no +33H), SER 00
    body = bytes.fromhex("6810" + "34129078563412" + "01" + "03" + "1F90" + "00")
    assert request == frame.PREAMBLE + body + bytes([sum(body) & 0xFF, 0x16])


def test_metering_reply_round_trip_and_units() -> None:
    data = frame.encode_metering(1234.56, 1200.0, "20261127160000", status=0x0004)
    reply = frame.build(frame.COLD_WATER, "12345678901234", 0x81, data)
    f = frame.take(bytearray(b"\xfe\xfe" + reply))
    assert f is not None and f.is_reply and f.address == "12345678901234" and f.meter_type == 0x10
    m = frame.decode_metering(f.data)
    assert m.field(frame.Field.CURRENT) == (1234.56, "m³") and m.field(frame.Field.SETTLEMENT) == (1200.0, "m³")
    assert (m.clock, m.status) == ("20261127160000", 4)
    litres = bytearray(data)
    litres[3 + 4] = 0x29  # unit code: L
    assert frame.decode_metering(bytes(litres)).field(frame.Field.CURRENT) == (1234.56, "L")
    litres[3 + 4] = 0x77
    with pytest.raises(FrameError, match="unknown unit code"):
        frame.decode_metering(bytes(litres)).field(frame.Field.CURRENT)
    # One bad field costs only itself: an FF-filled settlement is "none kept", the current flow stands.
    none_kept = bytearray(data)
    none_kept[3 + 5 : 3 + 9] = b"\xff" * 4
    with pytest.raises(frame.NoValue):
        frame.decode_metering(bytes(none_kept)).field(frame.Field.SETTLEMENT)
    assert frame.decode_metering(bytes(none_kept)).field(frame.Field.CURRENT) == (1234.56, "m³")


@given(st.binary(max_size=200))
def test_no_byte_sequence_crashes_the_decoder(data: bytes) -> None:
    buffer = bytearray(data)
    while (f := frame.take(buffer)) is not None:
        with contextlib.suppress(FrameError):
            m = frame.decode_metering(f.data)
            for name in frame.Field:
                with contextlib.suppress(FrameError):
                    m.field(name)
