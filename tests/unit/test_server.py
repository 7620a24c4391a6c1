"""The simulator's frame layer: CRC, frame splitting after noise, silence for unknown units."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.server import Slave, crc16, rtu_frame, split_rtu


def test_crc16_of_a_textbook_frame() -> None:
    # Read holding registers 0..9 of unit 1: 01 03 00 00 00 0A C5 CD (Modbus over serial line guide).
    assert crc16(bytes.fromhex("01030000000A")) == bytes.fromhex("C5CD")


def test_split_after_noise_and_across_chunks() -> None:
    frame = rtu_frame(1, bytes.fromhex("0300000002"))
    buffer = bytearray(b"\x00\xff" + frame[:5])
    assert split_rtu(buffer) is None  # incomplete
    buffer += frame[5:]
    assert split_rtu(buffer) == (1, bytes.fromhex("0300000002"))
    assert buffer == bytearray()


class Zeros:
    def read(self, function: int, address: int, count: int) -> list[int] | int:
        return [0] * count


def test_unknown_unit_is_silent_on_serial_and_exception_11_on_tcp() -> None:
    pdu = bytes.fromhex("0300000001")
    assert Slave({1: Zeros()}, silent_unknown=True).answer(2, pdu) is None
    assert Slave({1: Zeros()}, silent_unknown=False).answer(2, pdu) == bytes([0x83, 11])
    assert Slave({1: Zeros()}).answer(1, bytes.fromhex("0300000080")) == bytes([0x83, 3])  # 128 registers


@given(st.binary(max_size=300))
def test_no_byte_sequence_crashes_the_frame_splitter(data: bytes) -> None:
    buffer = bytearray(data)
    while (frame := split_rtu(buffer)) is not None:
        unit, pdu = frame
        Slave({unit: Zeros()}).answer(unit, pdu)
