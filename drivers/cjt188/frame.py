"""CJ/T 188 frames: ``FE.. 68 T A0..A6 C L DATA CS 16``.

Facts (docs/reference/protocols-and-meters.md §3, with their sources): T is the meter type
(10H cold water, 11H hot water, 20H heat, 30H gas); the address is 7 BCD bytes, A0 lowest; no +33H
offset (unlike DL/T 645); CS is the sum from 68H to the end of DATA, mod 256. Read data is C=01H
with DATA = DI (2 bytes, low first: 901FH is sent 1F 90) and a sequence byte SER; the reply is C=81H
(C1H abnormal). Read address is C=03H, DI 810AH, to the wildcard address AA x 7.
Meters in the field disagree on the DI's byte order: the standard's 1F 90, and 90 1F (many
prepaid and NB-IoT water meters, and the DI tables of several vendors); a meter of one kind does
not answer a request of the other (docs/reference/protocols-and-meters.md §3).
Reply to 901FH (water, gas): current cumulative flow (4 BCD bytes, 2 decimals, low first, then a
unit byte), the flow at the settlement date (same), the meter's clock (7 bytes BCD, YYYYMMDDhhmmss)
and 2 status bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from drivers.frame68 import ControlBits, FrameError, address_bytes, decode_bcd, encode_bcd, take_raw

PREAMBLE = b"\xfe\xfe\xfe\xfe"
WILDCARD = "aaaaaaaaaaaaaa"
TYPE_ANY = 0xAA
COLD_WATER = 0x10
READ, READ_ADDRESS = 0x01, 0x03
DI_METERING = 0x901F
DI_ADDRESS = 0x810A
#: the DI's byte order on the wire: "little" (1F 90, the standard's) first, then the other
DI_ORDERS = ("little", "big")

#: unit byte -> (unit, factor to that unit) as in CJ/T 188-2004 table 13 / -2018 table 20
UNIT_CODES: dict[int, tuple[str, float]] = {
    0x29: ("L", 1.0), 0x2C: ("m³", 1.0), 0x2D: ("m³", 10.0), 0x2E: ("m³", 100.0),
    0x32: ("L/h", 1.0), 0x35: ("m³/h", 1.0),
    0x02: ("Wh", 1.0), 0x05: ("kWh", 1.0), 0x08: ("MWh", 1.0),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame(ControlBits):
    meter_type: int
    address: str  #: 14 digits as printed ("aaaaaaaaaaaaaa" for the wildcard)
    control: int
    data: bytes


def build(meter_type: int, address: str, control: int, data: bytes, *, preamble: bool = True) -> bytes:
    body = bytes([0x68, meter_type]) + address_bytes(address, 14) + bytes([control, len(data)]) + data
    return (PREAMBLE if preamble else b"") + body + bytes([sum(body) & 0xFF, 0x16])


def read_request(
    address: str, di: int = DI_METERING, *, meter_type: int = COLD_WATER, ser: int = 0, order: str = "little"
) -> bytes:
    return build(meter_type, address, READ, di_bytes(di, order) + bytes([ser]))


def read_address_request(ser: int = 0, *, order: str = "little") -> bytes:
    return build(TYPE_ANY, WILDCARD, READ_ADDRESS, di_bytes(DI_ADDRESS, order) + bytes([ser]))


def di_bytes(di: int, order: str) -> bytes:
    return di.to_bytes(2, "little" if order == "little" else "big")


def di_of(data: bytes) -> tuple[int, str] | None:
    """The DI a request's DATA starts with, and the byte order it was sent in (None: unknown DI)."""
    if len(data) < 2:
        return None
    for order in DI_ORDERS:
        di = int.from_bytes(data[:2], "little" if order == "little" else "big")
        if di in (DI_METERING, DI_ADDRESS):
            return di, order
    return None


def take(buffer: bytearray) -> Frame | None:
    """One complete, valid frame off the front of ``buffer``, or None."""
    raw = take_raw(buffer, 10, 13)
    if raw is None:
        return None
    return Frame(raw[1], raw[2:9][::-1].hex(), raw[9], raw[11:-2])


class Field(StrEnum):
    """Which value of a 901FH reply a point is."""

    CURRENT = "current"  #: the cumulative flow now
    SETTLEMENT = "settlement"  #: the cumulative flow at the last settlement date
    STATUS = "status"  #: the status word (valve, battery)


class NoValue(FrameError):
    """A field the meter fills with FFH: it keeps no such value (absent, not a fault)."""


@dataclass(frozen=True, slots=True)
class Metering:
    """The 901FH reply of a water or gas meter: each field's 5 bytes (4 BCD, low first, and the
    unit code), decoded when asked for, so that one unreadable field does not cost the others."""

    current_bytes: bytes
    settlement_bytes: bytes
    clock: str  #: YYYYMMDDhhmmss as the meter says ("ffffffffffffff": it keeps no clock)
    status: int  #: 2 bytes, low first: D0-D1 valve, D2 battery low

    def field(self, name: Field) -> tuple[float, str]:
        """The value and its unit; raises NoValue for an FF-filled field, FrameError for a bad one."""
        if name is Field.CURRENT:
            return _flow(self.current_bytes, name)
        if name is Field.SETTLEMENT:
            return _flow(self.settlement_bytes, name)
        return float(self.status), "-"


def _flow(data: bytes, name: Field) -> tuple[float, str]:
    if data[:4] == b"\xff" * 4:
        raise NoValue(f"the meter keeps no {name.value} flow (FF FF FF FF)")
    value = decode_bcd(data[:4], 8, 2, False)
    if data[4] not in UNIT_CODES:
        raise FrameError(f"unknown unit code 0x{data[4]:02X}")
    unit, factor = UNIT_CODES[data[4]]
    return value * factor, unit


def decode_metering(data: bytes) -> Metering:
    """DATA of a 901FH reply (DI and SER included)."""
    if len(data) < 3 + 19:
        raise FrameError(f"901F reply too short ({len(data)} bytes)")
    body = data[3:]
    clock = bytes(reversed(body[10:17])).hex()
    return Metering(body[0:5], body[5:10], clock, int.from_bytes(body[17:19], "little"))


def encode_metering(
    current_m3: float, settlement_m3: float, clock: str, status: int = 0, ser: int = 0, *, order: str = "little"
) -> bytes:
    """DATA of a 901FH reply in m³ (for the simulator), the DI in the meter's byte order."""
    return (
        di_bytes(DI_METERING, order)
        + bytes([ser])
        + encode_bcd(current_m3, 8, 2, False)
        + b"\x2c"
        + encode_bcd(settlement_m3, 8, 2, False)
        + b"\x2c"
        + bytes(reversed(bytes.fromhex(clock)))
        + status.to_bytes(2, "little")
    )
