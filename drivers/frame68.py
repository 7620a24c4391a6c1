"""What DL/T 645 and CJ/T 188 frames share: the ``68H ... CS 16H`` frame family.

Both protocols frame a message as 68H, an address of BCD bytes sent low byte first, a control byte
whose top bits mean reply (80H), abnormal reply (40H) and follow-up frames (20H), a length byte, the
data, a checksum (the sum of the bytes from the first 68H to the end of the data, mod 256) and 16H;
values are BCD, least significant byte first (docs/reference/protocols-and-meters.md §2, §3).
"""

from __future__ import annotations


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


def address_bytes(address: str, digits: int = 12) -> bytes:
    """A printed meter address as sent: BCD, low byte first (DL/T 645: 12 digits, CJ/T 188: 14)."""
    if len(address) != digits:
        raise FrameError(f"address {address!r} must have {digits} digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError:
        raise FrameError(f"address {address!r} is not BCD") from None


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
