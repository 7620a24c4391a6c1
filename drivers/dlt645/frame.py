"""DL/T 645 frames: ``FE FE FE FE 68 A0..A5 68 C L DATA CS 16``.

Facts (../shared/reference/protocols-and-meters.md §2, with their sources): the address is 6 BCD
bytes, low byte first; every DATA byte is sent +33H; CS is the sum of the bytes from the first 68H
to the end of DATA, mod 256; replies set bit 7 of C, bit 6 for an abnormal reply (one error byte),
bit 5 when follow-up frames exist. A read (2007) is C=11H with the 4-byte data identifier (DI),
low byte first; the reply's DATA is the DI again and the value, BCD, least significant byte first,
with the sign (where a quantity has one) in the top bit of the most significant byte.
DL/T 645-1997 reads are C=01H with a 2-byte DI.
"""

from __future__ import annotations

from dataclasses import dataclass

PREAMBLE = b"\xfe\xfe\xfe\xfe"
WILDCARD = "aaaaaaaaaaaa"  #: every meter answers a read-address request to it (one meter on the line!)
BROADCAST = "999999999999"

READ_2007, READ_FOLLOW_2007, READ_ADDRESS = 0x11, 0x12, 0x13
READ_1997 = 0x01

ERROR_BITS = {
    0: "other error",
    1: "no such data (the meter does not have this data identifier)",
    2: "password error or not authorised",
    3: "baud rate cannot be changed",
    4: "too many annual time zones",
    5: "too many daily time slots",
    6: "too many tariffs",
}


class FrameError(ValueError):
    pass


class ControlBits:
    """The control byte's flags, the same in DL/T 645 and CJ/T 188."""

    __slots__ = ()
    control: int

    @property
    def is_reply(self) -> bool:
        return bool(self.control & 0x80)

    @property
    def is_error(self) -> bool:
        return bool(self.control & 0x40)

    @property
    def has_more(self) -> bool:
        return bool(self.control & 0x20)


@dataclass(frozen=True, slots=True)
class Frame(ControlBits):
    address: str  #: 12 digits as printed on the meter ("aaaaaaaaaaaa" for the wildcard)
    control: int
    data: bytes  #: with the 33H offset removed


def address_bytes(address: str, digits: int = 12) -> bytes:
    """A printed meter address as sent: BCD, low byte first (DL/T 645: 12 digits, CJ/T 188: 14)."""
    if len(address) != digits:
        raise FrameError(f"address {address!r} must have {digits} digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError:
        raise FrameError(f"address {address!r} is not BCD") from None


def build(address: str, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    body = b"\x68" + address_bytes(address) + b"\x68" + bytes([control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return (PREAMBLE if preamble else b"") + body + bytes([sum(body) & 0xFF, 0x16])


def read_request(address: str, di: int, *, version: int = 2007) -> bytes:
    if version == 1997:
        return build(address, READ_1997, di.to_bytes(2, "little"))
    return build(address, READ_2007, di.to_bytes(4, "little"))


def take_raw(buffer: bytearray, length_at: int, overhead: int, second_68: int | None = None) -> bytes | None:
    """One ``68 ... L DATA CS 16`` frame off the front of ``buffer``, as bytes, or None if incomplete.

    Shared by DL/T 645 and CJ/T 188: wake-up bytes and noise before 68H are dropped, a candidate whose
    checksum or end byte is wrong is skipped one byte at a time (resynchronisation).
    ``length_at``: index of L; ``overhead``: frame bytes besides DATA; ``second_68``: index of a
    second 68H the frame must have (DL/T 645).
    """
    while buffer:
        start = buffer.find(0x68)
        if start < 0:
            buffer.clear()
            return None
        del buffer[:start]
        if len(buffer) <= length_at:
            return None
        if second_68 is not None and buffer[second_68] != 0x68:
            del buffer[:1]
            continue
        total = overhead + buffer[length_at]
        if len(buffer) < total:
            return None
        raw = bytes(buffer[:total])
        if raw[-1] != 0x16 or sum(raw[:-2]) & 0xFF != raw[-2]:
            del buffer[:1]
            continue
        del buffer[:total]
        return raw
    return None


def take(buffer: bytearray) -> Frame | None:
    """One complete, valid frame off the front of ``buffer`` (wake-up bytes and noise skipped), or None."""
    raw = take_raw(buffer, 9, 12, second_68=7)
    if raw is None:
        return None
    return Frame(raw[1:7][::-1].hex(), raw[8], bytes((b - 0x33) & 0xFF for b in raw[10:-2]))


def error_text(word: int) -> str:
    reasons = [text for bit, text in ERROR_BITS.items() if word & (1 << bit)]
    return f"meter refused (error word 0x{word:02X}: {'; '.join(reasons) or 'unknown'})"


def decode_bcd(data: bytes, digits: int, decimals: int, signed: bool) -> float:
    """A value from its bytes (least significant first); raises FrameError for a non-BCD nibble."""
    n = digits // 2
    if len(data) < n:
        raise FrameError(f"value needs {n} bytes, reply has {len(data)}")
    value = bytearray(data[:n])
    negative = False
    if signed and value[-1] & 0x80:
        negative = True
        value[-1] &= 0x7F
    text = bytes(reversed(value)).hex()
    if not text.isdigit():
        raise FrameError(f"not BCD: 0x{bytes(reversed(data[:n])).hex().upper()}")
    number = int(text) / float(10**decimals)
    return -number if negative else number


def encode_bcd(value: float, digits: int, decimals: int, signed: bool) -> bytes:
    scaled = round(abs(value) * 10**decimals)
    limit = 8 * 10 ** (digits - 1) if signed else 10**digits  # a signed value's top bit is its sign
    scaled = min(scaled, limit - 1)
    raw = bytearray(reversed(bytes.fromhex(f"{scaled:0{digits}d}")))
    if signed and value < 0:
        raw[-1] |= 0x80
    return bytes(raw)
