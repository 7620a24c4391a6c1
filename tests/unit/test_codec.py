"""Codec: every type in every word/byte order, sentinels, and round trips (property tests)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import codec
from drivers.model import DataType, Point
from drivers.reading import tidy


def pt(type_: DataType, wo: str = "big", bo: str = "big", **kw: object) -> Point:
    return Point(name="x", address=0, type=type_, word_order=wo, byte_order=bo, **kw)  # type: ignore[arg-type]


# 230.5 as IEEE-754 float32 is 0x43668000: bytes A=43 B=66 C=80 D=00.
@pytest.mark.parametrize(
    ("wo", "bo", "words"),
    [
        ("big", "big", [0x4366, 0x8000]),  # ABCD
        ("little", "big", [0x8000, 0x4366]),  # CDAB
        ("big", "little", [0x6643, 0x0080]),  # BADC
        ("little", "little", [0x0080, 0x6643]),  # DCBA
    ],
)
def test_float32_in_all_four_orders(wo: str, bo: str, words: list[int]) -> None:
    assert codec.decode(pt(DataType.FLOAT32, wo, bo), words) == 230.5
    assert codec.encode(pt(DataType.FLOAT32, wo, bo), 230.5) == words


def test_cdab_read_as_abcd_is_the_known_nonsense() -> None:
    # The trap from LIBRARIES.md: word-swapped data decoded as ABCD is a tiny number, not an error.
    value = codec.decode(pt(DataType.FLOAT32), [0x8000, 0x4366])
    assert abs(value) < 1e-30


def test_integers_signedness_and_width() -> None:
    assert codec.decode(pt(DataType.INT16), [0xFFFE]) == -2
    assert codec.decode(pt(DataType.UINT16), [0xFFFE]) == 65534
    assert codec.decode(pt(DataType.INT32), [0xFFFF, 0xFFFE]) == -2
    assert codec.decode(pt(DataType.UINT32), [0x0001, 0x0000]) == 65536
    assert codec.decode(pt(DataType.UINT32, "little"), [0x0000, 0x0001]) == 65536
    assert codec.decode(pt(DataType.INT64), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]) == -1
    assert codec.decode(pt(DataType.UINT64), [0, 0, 1, 0]) == 65536
    assert codec.decode(pt(DataType.UINT64, "little"), [0, 1, 0, 0]) == 65536
    f64 = struct.unpack(">4H", struct.pack(">d", 12345.678))
    assert codec.decode(pt(DataType.FLOAT64), list(f64)) == 12345.678


def test_bcd() -> None:
    assert codec.decode(pt(DataType.BCD16), [0x1234]) == 1234
    assert codec.decode(pt(DataType.BCD32), [0x0012, 0x3456]) == 123456
    with pytest.raises(codec.Unavailable, match="not BCD"):
        codec.decode(pt(DataType.BCD16), [0x12A4])


def test_sentinels_make_a_point_unavailable_never_a_number() -> None:
    p = pt(DataType.INT16, invalid=(0x8000,))
    with pytest.raises(codec.Unavailable, match="0x8000"):
        codec.decode(p, [0x8000])
    assert codec.decode(p, [0x7FFF]) == 32767
    u32 = pt(DataType.UINT32, invalid=(0xFFFFFFFF,))
    with pytest.raises(codec.Unavailable):
        codec.decode(u32, [0xFFFF, 0xFFFF])


def test_nan_and_infinity_are_unavailable() -> None:
    with pytest.raises(codec.Unavailable, match="not a number"):
        codec.decode(pt(DataType.FLOAT32), [0x7FC0, 0x0000])
    with pytest.raises(codec.Unavailable):
        codec.decode(pt(DataType.FLOAT32), [0x7F80, 0x0000])


def test_wrong_register_count_is_an_error_not_a_value() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        codec.decode(pt(DataType.FLOAT32), [0x4366])


orders = st.sampled_from([("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")])


@given(order=orders, data=st.data(), type_=st.sampled_from([t for t in DataType if not t.is_float]))
def test_integer_round_trip(order: tuple[str, str], data: st.DataObject, type_: DataType) -> None:
    lo, hi = codec.type_range(type_)
    value = data.draw(st.integers(min_value=int(lo), max_value=int(hi)))
    p = pt(type_, *order)
    words = codec.encode(p, value)
    assert len(words) == type_.registers
    assert all(0 <= w <= 0xFFFF for w in words)
    assert codec.decode(p, words) == value


@given(order=orders, value=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float32_round_trip(order: tuple[str, str], value: float) -> None:
    p = pt(DataType.FLOAT32, *order)
    assert codec.decode(p, codec.encode(p, value)) == value


@given(order=orders, value=st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trip(order: tuple[str, str], value: float) -> None:
    p = pt(DataType.FLOAT64, *order)
    assert codec.decode(p, codec.encode(p, value)) == value


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4), type_=st.sampled_from(list(DataType)), order=orders
)
def test_any_words_decode_or_refuse_cleanly(words: list[int], type_: DataType, order: tuple[str, str]) -> None:
    """No register content crashes the decoder: a number, Unavailable, or ValueError for a bad count."""
    p = pt(type_, *order)
    try:
        v = codec.decode(p, words)
    except (codec.Unavailable, ValueError):
        return
    assert isinstance(v, int) or math.isfinite(v)


@given(bits=st.integers(0, 0xFFFFFFFF))
def test_round7_is_the_7_digit_string_round_trip_for_every_float32(bits: int) -> None:
    """The numeric rounding gives the very number (and sign) that ``float(f"{v:.7g}")`` gives."""
    (value,) = struct.unpack(">f", bits.to_bytes(4, "big"))
    if not math.isfinite(value):
        return
    want = float(f"{value:.7g}")
    got = codec.round7(value)
    assert got == want and math.copysign(1, got) == math.copysign(1, want), (value, got, want)


def test_round7_at_ties_powers_of_ten_and_the_ends_of_the_range() -> None:
    for x in (12345675.0, 2.5, 999.99994, 1000.0, 0.001, 1e-15, 16777215.0, 3.4028235e38, 1e-45, 0.0, -0.0, -230.1):
        (value,) = struct.unpack(">f", struct.pack(">f", x))
        assert codec.round7(value) == float(f"{value:.7g}"), value


def test_a_layout_unpacks_plain_points_in_one_go_and_the_rest_one_by_one() -> None:
    """One reply: a float32 ABCD, a gap, a CDAB uint32 (codec.decode), an int16 with a sentinel."""
    f = pt(DataType.FLOAT32, "big", "big")
    u = Point(name="u", address=4, type=DataType.UINT32, word_order="little")
    s = Point(name="s", address=6, type=DataType.INT16, invalid=(0x8000,))
    layout = codec.Layout([(f, 0), (u, 4), (s, 6)])
    data = struct.pack(">f", 230.1) + bytes(4) + struct.pack(">HH", 0x5678, 0x1234) + struct.pack(">H", 0x8000)
    got = layout.unpack(data)
    assert got[:2] == [230.1, 0x12345678]
    assert isinstance(got[2], codec.Absent)
    nan = layout.unpack(struct.pack(">f", math.nan) + data[4:])
    assert isinstance(nan[0], codec.Unavailable) and "not a number" in str(nan[0])


@given(bits=st.integers(0, 0xFFFFFFFF), k=st.integers(-9, 9))
def test_a_float32_times_a_power_of_ten_in_one_rounding_is_what_tidy_gave(bits: int, k: int) -> None:
    """codec.ROUND7 (W -> kW): round7(value × 10**k) is the number tidy's string round trip made of it."""
    (value,) = struct.unpack(">f", bits.to_bytes(4, "big"))
    if not math.isfinite(value):
        return
    scaled = codec.round7(value) * 10.0**k
    if not math.isfinite(scaled) or (scaled != 0 and not 1e-15 <= abs(scaled) < 1e22):
        return  # beyond what a meter register holds
    assert codec.round7(scaled) == tidy(scaled), (value, k)


def test_which_points_take_which_path_to_their_value() -> None:
    kinds = {
        codec.AS_IS: pt(DataType.FLOAT32),
        codec.ROUND7: pt(DataType.FLOAT32, scale=0.001),
        codec.TIDY: pt(DataType.INT16, scale=0.1),
        codec.DERIVED: pt(DataType.INT16, scale_factor="sf"),
    }
    for kind, point in kinds.items():
        assert codec.value_kind(point) == kind, point
    assert codec.value_kind(pt(DataType.FLOAT64)) == codec.TIDY  # 15 digits, not exact as it comes
