"""The 导则 TCP frame: ``68 68 16 16`` · length · 指令序号 · 指令内容 · CRC16 · ``55 AA 55 AA``.

| offset | size | field                         | encoding                                         |
|--------|------|-------------------------------|--------------------------------------------------|
| 0      | 4    | 包头 (head)                   | ``68 68 16 16`` (``reversed``: ``55 AA 55 AA``)  |
| 4      | 4    | 有效数据总长度 = 4 + M        | uint32 little-endian                             |
| 8      | 4    | 指令序号                      | uint32 little-endian, not checked by receivers   |
| 12     | M    | 指令内容                      | AES ciphertext of the XML (crypto.py)            |
| 12+M   | 2    | CRC-16/XMODEM                 | span and byte order per Variant                  |
| 14+M   | 4    | 包尾 (tail)                   | ``55 AA 55 AA`` (``reversed``: ``68 68 16 16``)  |

Sources (docs/datacenter.md §Frame): field layout R ``MessageDatagram``, C ``DataOperator.packg``,
G ``str_communicate_data``, L; little-endian length R (``e4 00 00 00`` = 228 in its sample frame),
Z ``common/message.js:129,211``; CRC-16/XMODEM table in R, G, Z, C.

``FrameDecoder`` cuts frames out of a TCP byte stream and never raises: bytes it cannot use come
out as ``Skipped`` with the reason. ``decode_frame`` checks exactly one frame and raises
``FrameError``, the only exception bad input produces here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from collector.uplink.variant import ByteOrder, CrcSpan, Variant

HEAD = b"\x68\x68\x16\x16"
TAIL = b"\x55\xaa\x55\xaa"
#: Length + 指令序号 + CRC + tail around the ciphertext.
OVERHEAD = 4 + 4 + 4 + 2 + 4
#: Largest 指令内容 accepted by default. A report of 50 meters × 10 values is about 32 KiB; a
#: length field beyond this is taken for garbage, not waited for.
MAX_PAYLOAD = 1 << 20


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_xmodem(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/XMODEM: poly 0x1021, init 0x0000, no reflection, no final XOR (check "123456789" → 0x31C3)."""
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


@dataclass(frozen=True, slots=True)
class CrcForm:
    """Which bytes a CRC covers and how its two bytes are ordered."""

    span: CrcSpan
    order: ByteOrder

    def __str__(self) -> str:
        return f"span {self.span}, {self.order}-endian"


_FORMS = tuple(CrcForm(s, o) for s in ("head", "data") for o in ("big", "little"))


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    seq: int  #: 指令序号
    payload: bytes  #: 指令内容: the ciphertext
    crc_form: CrcForm  #: the span and order its CRC matched (decoding); the variant's (encoding)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Bytes the decoder dropped, and why."""

    reason: str
    count: int  #: bytes dropped
    sample: bytes  #: the first bytes dropped (at most 16), for the log


class FrameError(ValueError):
    """A byte string is not one well-formed frame."""


def _markers(variant: Variant) -> tuple[bytes, bytes]:
    return (HEAD, TAIL) if variant.markers == "normal" else (TAIL, HEAD)


def _crc_of(frame: bytes | bytearray, end: int, form: CrcForm) -> int:
    """The CRC of a frame whose ciphertext ends at ``end`` (exclusive)."""
    start = 0 if form.span == "head" else 8
    return crc16_xmodem(memoryview(frame)[start:end])


def encode_frame(payload: bytes, seq: int, variant: Variant) -> bytes:
    """The frame carrying ``payload`` (already encrypted) with 指令序号 ``seq``."""
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"指令序号 {seq} does not fit in 32 bits")
    head, tail = _markers(variant)
    body = head + struct.pack("<II", 4 + len(payload), seq) + payload
    form = CrcForm(variant.crc_span, variant.crc_order)
    crc = _crc_of(body, len(body), form)
    return body + crc.to_bytes(2, variant.crc_order) + tail


class FrameDecoder:
    """Incremental decoder of one TCP stream.

    ``feed`` returns the frames and skips found so far, in stream order. After a bad frame it
    drops only the first byte of the false head and searches again, so a frame hidden behind a
    truncated one is still found. Memory is bounded by ``max_payload`` plus one frame's overhead.
    """

    def __init__(self, variant: Variant, max_payload: int = MAX_PAYLOAD) -> None:
        self.variant = variant
        self.max_payload = max_payload
        self._head, self._tail = _markers(variant)
        own = CrcForm(variant.crc_span, variant.crc_order)
        self._forms = (own,) if variant.crc_strict else (own, *(f for f in _FORMS if f != own))
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not complete yet."""
        return len(self._buf)

    def _drop(self, count: int, reason: str) -> Skipped:
        sample = bytes(self._buf[: min(count, 16)])
        del self._buf[:count]
        return Skipped(reason, count, sample)

    def discard_partial(self, reason: str = "incomplete frame at idle timeout") -> Skipped | None:
        """Drop what is buffered (the caller saw the stream go idle mid-frame); None if nothing was."""
        return self._drop(len(self._buf), reason) if self._buf else None

    def feed(self, data: bytes) -> list[Frame | Skipped]:
        self._buf += data
        out: list[Frame | Skipped] = []
        buf, head = self._buf, self._head
        while buf:
            start = buf.find(head)
            if start < 0:
                # keep the longest tail that could begin a head
                keep = next((n for n in range(len(head) - 1, 0, -1) if buf.endswith(head[:n])), 0)
                if len(buf) > keep:
                    out.append(self._drop(len(buf) - keep, "no frame head"))
                break
            if start > 0:
                out.append(self._drop(start, "bytes before a frame head"))
                continue
            if len(buf) < 8:
                break
            (length,) = struct.unpack_from("<I", buf, 4)
            size = length - 4
            if length < 4:
                out.append(self._drop(1, f"length field {length} is below 4"))
                continue
            if size > self.max_payload:
                out.append(self._drop(1, f"length field {length} exceeds the limit of {self.max_payload + 4}"))
                continue
            if size % 16:
                out.append(self._drop(1, f"length field {length}: ciphertext of {size} bytes is not whole AES blocks"))
                continue
            total = OVERHEAD + size
            if len(buf) < total:
                break
            if buf[total - 4 : total] != self._tail:
                out.append(self._drop(1, f"no frame tail where length {length} puts it"))
                continue
            end = 12 + size
            got = bytes(buf[end : end + 2])
            form = next((f for f in self._forms if _crc_of(buf, end, f).to_bytes(2, f.order) == got), None)
            if form is None:
                own = self._forms[0]
                want = _crc_of(buf, end, own).to_bytes(2, own.order)
                out.append(self._drop(1, f"bad CRC: frame has {got.hex()}, computed {want.hex()} ({own})"))
                continue
            (seq,) = struct.unpack_from("<I", buf, 8)
            out.append(Frame(seq, bytes(buf[12:end]), form))
            del buf[:total]
        return out


def decode_frame(data: bytes, variant: Variant, max_payload: int = MAX_PAYLOAD) -> Frame:
    """The one frame that ``data`` is exactly; FrameError says what is wrong otherwise."""
    decoder = FrameDecoder(variant, max_payload)
    events = decoder.feed(data)
    frames = [e for e in events if isinstance(e, Frame)]
    skips = [e for e in events if isinstance(e, Skipped)]
    if skips:
        raise FrameError(skips[0].reason)
    if not frames:
        raise FrameError(f"incomplete frame: {len(data)} bytes")
    if len(frames) > 1 or decoder.buffered:
        raise FrameError("more than one frame")
    return frames[0]
