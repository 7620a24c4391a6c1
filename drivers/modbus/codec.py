"""Register words <-> numbers: types, word and byte order, sentinels.

A 32-bit value spans two 16-bit registers; meters disagree on the order of the words and, rarely,
of the bytes inside a word. With bytes A (most significant) .. D:

=====  ==========  ==========  ==================================
order  word_order  byte_order  seen in
=====  ==========  ==========  ==================================
ABCD   big         big         Eastron, Chint, Huawei (the Modbus default)
CDAB   little      big         Sungrow U32, many Chinese meters
BADC   big         little      rare
DCBA   little      little      rare
=====  ==========  ==========  ==================================

Decoding CDAB data as ABCD gives nonsense that looks like a number (230.5 V read as -2.4e-41), so
the order is always explicit in the model and every order is tested.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.model import DataType, Point


class Unavailable(Exception):
    """The registers hold no value for this point (a sentinel, NaN, a non-BCD nibble)."""


class Absent(Unavailable):
    """The meter says, by design, that it has no value: the point's declared "not available" marker
    (SunSpec's not-implemented patterns, Huawei's 0x7FFFFFFF). Not a fault: the reading stays good."""


_STRUCT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}


_WORDS = [struct.Struct(f">{n}H") for n in range(5)]  #: 0..4 registers, precompiled (decode is per value)
_VALUES = {t: struct.Struct(">" + f) for t, f in _STRUCT.items()}


def arrange(words: Sequence[int], word_order: str, byte_order: str) -> bytes:
    """The value's bytes, most significant first, from registers as they came off the wire."""
    n = len(words)
    pack = _WORDS[n].pack if n < len(_WORDS) else struct.Struct(f">{n}H").pack
    raw = pack(*words) if word_order == "big" else pack(*reversed(words))
    if byte_order == "little":
        swapped = bytearray(raw)
        swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
        return bytes(swapped)
    return raw


def disarrange(data: bytes, word_order: str, byte_order: str) -> list[int]:
    """Inverse of :func:`arrange`: registers in wire order from most-significant-first bytes."""
    if byte_order == "little":
        swapped = bytearray(data)
        swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
        data = bytes(swapped)
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    return words if word_order == "big" else list(reversed(words))


def decode(point: Point, words: Sequence[int]) -> int | float:
    """The number a point's registers hold, before scaling.

    Raises Unavailable for a sentinel, NaN/infinity or an invalid BCD digit, and ValueError when
    the number of words is wrong (a short reply must never decode as a value).
    """
    n = point.type.registers
    if len(words) != n:
        raise ValueError(f"{point.name}: {point.type.value} needs {n} registers, got {len(words)}")
    data = arrange(words, point.word_order, point.byte_order)
    if point.invalid and int.from_bytes(data, "big") in point.invalid:
        raise Absent(f"not available (meter sent 0x{data.hex().upper()})")
    if point.type in (DataType.BCD16, DataType.BCD32):
        return _bcd(data)
    value: int | float = _VALUES[point.type].unpack(data)[0]
    if isinstance(value, float) and not math.isfinite(value):
        raise Unavailable(f"not a number (meter sent {value})")  # a fault, unless the model declares it
    return value


_TEN = tuple(10.0**k for k in range(23))  #: 10**0 .. 10**22, every one exact in a double


def round7(value: float) -> float:
    """A float32's value to the 7 significant digits it holds (230.10000610351562 -> 230.1), the same
    number as ``float(f"{value:.7g}")`` at half its cost: scaled by an exact power of ten, rounded to
    an integer of 7 digits and scaled back, each step exact or correctly rounded."""
    size = abs(value)
    if not 1e-15 <= size < 1e22:
        return float(f"{value:.7g}")  # zero, and magnitudes no meter register holds
    e = 6 - math.floor(math.log10(size))
    if e >= 0:
        return round(value * _TEN[e]) / _TEN[e]
    return round(value / _TEN[-e]) * _TEN[-e]


_WORD_LISTS: dict[int, struct.Struct] = {}


def words(data: bytes) -> list[int]:
    """Registers (big-endian words) from a reply's bytes."""
    n = len(data) // 2
    unpack = _WORD_LISTS.get(n)
    if unpack is None:
        unpack = _WORD_LISTS[n] = struct.Struct(f">{n}H")
    return list(unpack.unpack(data))


AS_IS, ROUND7, TIDY, DERIVED = range(4)
_POWERS_OF_TEN = frozenset(10.0**k for k in range(-9, 10))


def value_kind(point: Point) -> int:
    """How a point's value follows from its raw number (see Layout.spans).

    AS_IS: unscaled float32 (rounded already) or a 32-bit integer (exact). ROUND7: a float32 times a
    power of ten, rounded to its 7 digits in one step (what a decimal shift of the 7 digits gives, as
    the string round trip did). TIDY: anything else scaled. DERIVED: states, scale factors, sums."""
    if point.states or point.scale_factor or point.add or point.scale_by:
        return DERIVED
    if point.scale == 1.0 and point.registers <= 2:
        return AS_IS
    if point.type is DataType.FLOAT32 and point.scale in _POWERS_OF_TEN:
        return ROUND7
    return TIDY


class Layout:
    """How one planned reply becomes raw numbers: one precompiled struct unpacks every point that is a
    plain big-endian number (most points of most meters) in one call; the rest (another word or byte
    order, BCD, sentinels, overlapping views) go through :func:`decode` one by one.

    ``unpack(data)`` gives, for each of the request's points in order, its raw number or the
    Unavailable that stands for it; float32 values are rounded to the 7 digits a float32 holds (230.1,
    not 230.10000610351562)."""

    __slots__ = ("_float32", "_plain", "_struct", "points", "spans")

    def __init__(self, points: Sequence[tuple[Point, int]]) -> None:
        self.points = tuple(points)
        #: per point: (point, its name, its first and end register in the reply, how its value follows
        #: from the raw number: AS_IS, ROUND7 or TIDY after × scale, or DERIVED from other points)
        self.spans = tuple((p, p.name, o, o + p.registers, value_kind(p)) for p, o in self.points)
        fmt, at, plain = ">", 0, []
        for i, (point, offset) in enumerate(self.points):
            if (
                point.type in _STRUCT
                and point.word_order == "big"
                and point.byte_order == "big"
                and not point.invalid
                and 2 * offset >= at
            ):
                gap = 2 * offset - at
                fmt += (f"{gap}x" if gap else "") + _STRUCT[point.type]
                at = 2 * (offset + point.registers)
                plain.append(i)
        self._struct = struct.Struct(fmt) if plain else None
        self._plain = tuple(plain)
        self._float32 = tuple(self.points[i][0].type is DataType.FLOAT32 for i in plain)

    def unpack(self, data: bytes) -> list[int | float | Unavailable]:
        out: list[int | float | Unavailable | None] = [None] * len(self.points)
        if self._struct is not None:
            values = self._struct.unpack_from(data)
            for i, value, f32 in zip(self._plain, values, self._float32, strict=True):
                if isinstance(value, float):
                    if not math.isfinite(value):
                        out[i] = Unavailable(f"not a number (meter sent {value})")
                        continue
                    if f32:
                        value = round7(value)
                out[i] = value
        if len(self._plain) < len(self.points):
            regs = words(data)
            for i, (point, offset) in enumerate(self.points):
                if out[i] is None:
                    try:
                        raw = decode(point, regs[offset : offset + point.registers])
                    except Unavailable as exc:
                        out[i] = exc
                        continue
                    out[i] = round7(raw) if point.type is DataType.FLOAT32 else raw
        return out  # type: ignore[return-value]  # every slot is filled


def encode(point: Point, raw: int | float) -> list[int]:
    """Registers in wire order for a raw number; the inverse of :func:`decode`."""
    if point.type in (DataType.BCD16, DataType.BCD32):
        digits = point.type.registers * 4
        if not 0 <= int(raw) < 10**digits:
            raise ValueError(f"{raw} does not fit {digits} BCD digits")
        data = bytes.fromhex(f"{int(raw):0{digits}d}")
    elif point.type in (DataType.FLOAT32, DataType.FLOAT64):
        data = struct.pack(">" + _STRUCT[point.type], float(raw))
    else:
        data = struct.pack(">" + _STRUCT[point.type], int(raw))
    return disarrange(data, point.word_order, point.byte_order)


def _bcd(data: bytes) -> int:
    text = data.hex()
    if not text.isdigit():
        raise Unavailable(f"not BCD (meter sent 0x{text.upper()})")
    return int(text)


def type_range(data_type: DataType) -> tuple[float, float]:
    """Smallest and largest raw value of a type (used for rollover and by the simulator)."""
    if data_type in (DataType.FLOAT32, DataType.FLOAT64):
        big = 3.4e38 if data_type is DataType.FLOAT32 else 1.7e308
        return -big, big
    if data_type in (DataType.BCD16, DataType.BCD32):
        return 0, 10 ** (data_type.registers * 4) - 1
    bits = 16 * data_type.registers
    if data_type.signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


ORDER_NAMES = {
    ("big", "big"): "ABCD",
    ("little", "big"): "CDAB",
    ("big", "little"): "BADC",
    ("little", "little"): "DCBA",
}


def order_name(point: Point) -> str:
    """ABCD, CDAB, BADC or DCBA for a 32-bit view of the point's word and byte order."""
    return ORDER_NAMES[(point.word_order, point.byte_order)]
