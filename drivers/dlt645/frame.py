"""DL/T 645 frames: ``FE FE FE FE 68 A0..A5 68 C L DATA CS 16``.

Facts (docs/reference/protocols-and-meters.md §2, with their sources): the address is 6 BCD
bytes, low byte first; every DATA byte is sent +33H; CS is the sum of the bytes from the first 68H
to the end of DATA, mod 256; replies set bit 7 of C, bit 6 for an abnormal reply (one error byte),
bit 5 when follow-up frames exist. A read (2007) is C=11H with the 4-byte data identifier (DI),
low byte first; the reply's DATA is the DI again and the value, BCD, least significant byte first,
with the sign (where a quantity has one) in the top bit of the most significant byte.
DL/T 645-1997 reads are C=01H with a 2-byte DI.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.frame68 import ControlBits, FrameError, address_bytes, decode_bcd, encode_bcd, take_raw

__all__ = ["ControlBits", "FrameError", "address_bytes", "decode_bcd", "encode_bcd", "take_raw"]  # shared

PREAMBLE = b"\xfe\xfe\xfe\xfe"
WILDCARD = "aaaaaaaaaaaa"  #: every meter answers a read-address request to it (one meter on the line!)
BROADCAST = "999999999999"

READ_2007, READ_FOLLOW_2007, READ_ADDRESS = 0x11, 0x12, 0x13
READ_1997 = 0x01

NO_SUCH_DATA = 0x02  #: the error word of a meter that does not have the identifier asked for
ERROR_BITS = {
    0: "other error",
    1: "no such data (the meter does not have this data identifier)",
    2: "password error or not authorised",
    3: "baud rate cannot be changed",
    4: "too many annual time zones",
    5: "too many daily time slots",
    6: "too many tariffs",
}


@dataclass(frozen=True, slots=True)
class Frame(ControlBits):
    address: str  #: 12 digits as printed on the meter ("aaaaaaaaaaaa" for the wildcard)
    control: int
    data: bytes  #: with the 33H offset removed


@dataclass(frozen=True, slots=True)
class ValueFormat:
    """How one value sits in a reply: ``digits`` BCD digits, ``decimals`` of them after the point
    (the standard's "XXXXXX.XX": 8 and 2), the sign in the top bit, at ``offset`` bytes into a data
    block's reply (0 for a single value)."""

    digits: int
    decimals: int
    signed: bool = False
    offset: int = 0

    @property
    def size(self) -> int:
        return self.digits // 2

    @property
    def span(self) -> float:
        """Where the counter wraps to 0: 999999.99 kWh + 0.01 for XXXXXX.XX."""
        return 10.0 ** (self.digits - self.decimals)

    def take(self, payload: bytes) -> bytes:
        """The value's bytes, as they came (least significant first)."""
        return payload[self.offset : self.offset + self.size]

    def decode(self, payload: bytes) -> float:
        return decode_bcd(payload[self.offset :], self.digits, self.decimals, self.signed)

    def encode(self, value: float) -> bytes:
        return encode_bcd(value, self.digits, self.decimals, self.signed)


def build(address: str, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    body = b"\x68" + address_bytes(address) + b"\x68" + bytes([control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return (PREAMBLE if preamble else b"") + body + bytes([sum(body) & 0xFF, 0x16])


def read_request(address: str, di: int, *, version: int = 2007) -> bytes:
    if version == 1997:
        return build(address, READ_1997, di.to_bytes(2, "little"))
    return build(address, READ_2007, di.to_bytes(4, "little"))


def take(buffer: bytearray) -> Frame | None:
    """One complete, valid frame off the front of ``buffer`` (wake-up bytes and noise skipped), or None."""
    raw = take_raw(buffer, 9, 12, second_68=7)
    if raw is None:
        return None
    return Frame(raw[1:7][::-1].hex(), raw[8], bytes((b - 0x33) & 0xFF for b in raw[10:-2]))


def error_text(word: int) -> str:
    reasons = [text for bit, text in ERROR_BITS.items() if word & (1 << bit)]
    return f"meter refused (error word 0x{word:02X}: {'; '.join(reasons) or 'unknown'})"
