"""The simulator's frame layer: CRC, frame splitting after noise, silence for unknown units."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.simulator.modbus import Slave, split_rtu
from drivers.modbus.rtu import crc16, rtu_frame

#: function codes whose request length split_rtu knows: a buffer starting with one may still complete
KNOWN_LENGTH = (1, 2, 3, 4, 5, 6, 15, 16)

#: well-formed read requests (function 3 or 4) with any unit, address and count, often near the limits
REQUESTS = st.builds(
    lambda unit, fc, address, count: rtu_frame(unit, bytes([fc]) + struct.pack(">HH", address, count)),
    st.integers(0, 255),
    st.sampled_from([3, 4]),
    st.integers(0, 0xFFFF) | st.integers(0xFF00, 0xFFFF),
    st.integers(0, 0xFFFF) | st.integers(0, 130),
)


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


def expected_answer(pdu: bytes) -> bytes:
    """What a known unit of Zeros must answer, from the Modbus spec: exception 1 for a function other
    than 3 and 4, 3 for a malformed request or a count outside 1..125, 2 past register 65535."""
    fc = pdu[0]
    if fc not in (3, 4):
        return bytes([fc | 0x80, 1])
    if len(pdu) != 5:
        return bytes([fc | 0x80, 3])
    address, count = struct.unpack(">HH", pdu[1:])
    if not 1 <= count <= 125:
        return bytes([fc | 0x80, 3])
    if address + count > 0x10000:
        return bytes([fc | 0x80, 2])
    return bytes([fc, 2 * count]) + bytes(2 * count)


@pytest.mark.parametrize(
    ("address", "count", "answer"),
    [
        (0, 0, "8303"),
        (0, 1, "03020000"),
        (0, 125, "03fa" + "00" * 250),
        (0, 126, "8303"),
        (0xFFFF, 1, "03020000"),  # the last register
        (0xFFFF, 2, "8302"),  # past it
        (0xFF83, 125, "03fa" + "00" * 250),  # ends at the last register
        (0xFF84, 125, "8302"),
    ],
)
def test_read_limits(address: int, count: int, answer: str) -> None:
    pdu = bytes([3]) + struct.pack(">HH", address, count)
    assert Slave({1: Zeros()}).answer(1, pdu) == bytes.fromhex(answer) == expected_answer(pdu)


@given(st.lists(st.one_of(st.binary(max_size=40), REQUESTS), max_size=12))
def test_no_byte_sequence_crashes_the_frame_splitter(chunks: list[bytes]) -> None:
    """Noise and requests in any order: each call takes bytes off the front only, a frame it returns
    is a CRC-valid frame that ended the bytes it took, and what it leaves could still become a frame."""
    buffer = bytearray(b"".join(chunks))
    while True:
        before = bytes(buffer)
        frame = split_rtu(buffer)
        after = bytes(buffer)
        assert before.endswith(after), "split_rtu only takes bytes off the front"
        if frame is None:
            assert len(after) < 4 or after[1] in KNOWN_LENGTH, f"kept bytes that can never be a frame: {after.hex()}"
            break
        unit, pdu = frame
        taken = before[: len(before) - len(after)]
        assert taken.endswith(rtu_frame(unit, pdu)), (taken.hex(), unit, pdu.hex())
        assert Slave({unit: Zeros()}).answer(unit, pdu) == expected_answer(pdu), pdu.hex()


@given(st.lists(REQUESTS, max_size=12))
def test_back_to_back_requests_split_one_by_one(frames: list[bytes]) -> None:
    buffer = bytearray(b"".join(frames))
    got: list[bytes] = []
    while len(got) <= len(frames) and (frame := split_rtu(buffer)) is not None:  # bounded, even if nothing is taken
        got.append(rtu_frame(*frame))
    assert got == frames and buffer == bytearray()
