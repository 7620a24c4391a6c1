"""DL/T 645 frames: golden bytes from the standard's examples, BCD with sign, and robustness."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645 import frame


def test_read_address_to_the_wildcard_is_the_textbook_frame() -> None:
    # FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16 (checksum 0x68*2 + 0xAA*6 + 0x13 = 0x4DF)
    assert frame.build(frame.WILDCARD, frame.READ_ADDRESS) == bytes.fromhex("FEFEFEFE68AAAAAAAAAAAA681300DF16")


def test_read_request_sends_the_di_low_byte_first_plus_33h() -> None:
    request = frame.read_request("123456789012", 0x00010000)
    # address 12 34 56 78 90 12 goes out low byte first: 12 90 78 56 34 12; DI 00 01 00 00 -> 33 33 34 33
    assert request.hex().upper().startswith("FEFEFEFE68129078563412681104" + "33333433")
    assert request[-1] == 0x16 and request[-2] == sum(request[4:-2]) & 0xFF
    old = frame.read_request("123456789012", 0x9010, version=1997)
    assert old[12] == 0x01 and old[13] == 2 and old[14:16] == bytes([0x10 + 0x33, 0x90 + 0x33])


def test_take_skips_wake_up_bytes_and_noise_and_checks_the_sum() -> None:
    good = frame.build("000000000001", 0x91, bytes.fromhex("00000100") + bytes.fromhex("07125300"))
    bad = bytearray(good)
    bad[-2] ^= 0xFF
    buffer = bytearray(b"\x00\xfe\x55" + bytes(bad) + good)
    f = frame.take(buffer)
    assert f is not None and f.address == "000000000001" and f.is_reply and not f.is_error
    assert f.data == bytes.fromhex("0000010007125300")
    assert frame.decode_bcd(f.data[4:], 8, 2, False) == 531207.0 / 100  # 00531207 -> 5312.07
    assert buffer == bytearray()


@pytest.mark.parametrize(
    ("raw", "digits", "decimals", "signed", "value"),
    [
        (bytes.fromhex("07125300"), 8, 2, False, 5312.07),  # energy XXXXXX.XX
        (bytes.fromhex("0523"), 4, 1, False, 230.5),  # voltage XXX.X
        (bytes.fromhex("500201"), 6, 3, True, 10.25),  # current XXX.XXX: 010.250
        (bytes.fromhex("500281"), 6, 3, True, -10.25),  # the sign is the top bit of the top byte
        (bytes.fromhex("000232"), 6, 4, True, 32.02),  # power XX.XXXX
        (bytes.fromhex("5089"), 4, 3, True, -0.95),  # power factor X.XXX, negative
    ],
)
def test_bcd_formats(raw: bytes, digits: int, decimals: int, signed: bool, value: float) -> None:
    assert frame.decode_bcd(raw, digits, decimals, signed) == pytest.approx(value)
    assert frame.encode_bcd(value, digits, decimals, signed) == raw


def test_error_reply_names_the_reason() -> None:
    assert "no such data" in frame.error_text(0x02)
    with pytest.raises(frame.FrameError, match="not BCD"):
        frame.decode_bcd(bytes.fromhex("1A00"), 4, 1, False)


@given(st.binary(max_size=200))
def test_no_byte_sequence_crashes_the_decoder(data: bytes) -> None:
    buffer = bytearray(data)
    while (f := frame.take(buffer)) is not None:
        assert len(f.address) == 12
        with contextlib.suppress(frame.FrameError):
            frame.decode_bcd(f.data, 8, 2, True)


@given(st.integers(0, 79_999_999), st.booleans(), st.sampled_from([(8, 2), (6, 3), (4, 1), (6, 4)]))
def test_bcd_round_trip(n: int, negative: bool, fmt: tuple[int, int]) -> None:
    digits, decimals = fmt
    n %= 8 * 10 ** (digits - 1)
    value = (-n if negative else n) / 10**decimals
    assert frame.decode_bcd(frame.encode_bcd(value, digits, decimals, True), digits, decimals, True) == pytest.approx(
        value
    )
