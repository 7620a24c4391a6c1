"""Every point on which field implementations of the data-centre protocol disagree, as one value.

A collector cannot discover which dialect a platform speaks; the platform's engineer tells us, or
its sample frame does. Each option below names the implementations that use each choice (source
letters and files as in docs/datacenter.md §Sources); the default is the most common field practice,
or the only choice proven by a captured frame where the count is even. ``parse_variant`` reads the
``datacenter.variant`` mapping of the config and reports every bad key at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, get_args, get_type_hints

CrcSpan = Literal["head", "data"]
ByteOrder = Literal["big", "little"]
Markers = Literal["normal", "reversed"]
FrameSeq = Literal["counter", "zero"]
AesMode = Literal["cbc", "ecb"]
Padding = Literal["zero", "pkcs7", "ascii0"]
Md5Order = Literal["sequence+key", "key+sequence"]
HexCase = Literal["lower", "upper"]
ReportAck = Literal["any", "none"]
TypeStyle = Literal["operation", "element"]
IdTag = Literal["building_id", "project_id"]
ParserTag = Literal["parser", "parse"]
Encoding = Literal["utf-8", "gbk"]


@dataclass(frozen=True, slots=True)
class Variant:
    """One platform's dialect of the 导则 TCP protocol (docs/datacenter.md §Variants)."""

    #: Which bytes the frame's CRC-16/XMODEM covers. ``head``: 包头 through 指令内容, bytes 0…11+M
    #: (R ``Program.cs`` sample frame, the only captured frame; G ``check_crc_data_communicate_data``).
    #: ``data``: 指令序号 and 指令内容 only (C ``DataOperator`` ``copyOfRange(packBytes, 8, len+8)``;
    #: Z ``common/message.js:141,214``). 2 : 2 in code; the captured frame decides the default.
    crc_span: CrcSpan = "head"
    #: Byte order of the CRC on the wire. ``big``: R's captured frame (``... 6441 55aa55aa`` for
    #: CRC 0x6441). ``little``: C (``packBytes[len-6] = (byte) crc``), Z ``message.js:143,216``
    #: (``UInt16LE``), G. 1 : 3 in code, but only ``big`` is proven on a wire, and it pairs with
    #: ``head`` in that frame; a platform's sample frame settles it (the decoder reports what it saw).
    crc_order: ByteOrder = "big"
    #: ``True``: a received frame must carry the CRC in exactly the span and order above.
    #: ``False`` (default): accept any of the four span/order forms and report which one matched
    #: (``Frame.crc_form``), so a log shows a mismatch instead of a silent refusal. Our own frames
    #: always use the configured form.
    crc_strict: bool = False
    #: ``normal``: 包头 ``68 68 16 16``, 包尾 ``55 AA 55 AA`` (R ``MessageDatagram``, C, G, L: 5 code
    #: bases). ``reversed``: ``55 AA 55 AA`` first, ``68 68 16 16`` last (Z ``common/signal.js:27-28``).
    markers: Markers = "normal"
    #: What goes in 指令序号: ``counter`` (1, 2, … per connection; R's frame carries a non-zero
    #: value) or ``zero``. No receiver found checks it (reference §2.1).
    frame_seq: FrameSeq = "counter"
    #: AES-128 mode. ``cbc``: CBC with IV = the key (R ``RijndaelManaged`` and its captured frame,
    #: C ``AES/CBC/NoPadding`` + ``IvParameterSpec(keyiv)``, Z ``message.js:71,102``,
    #: Q ``src/utils.js:41,47``, B ``encypt.go:22``, A ``AcrelGatewayCryptoService.java:20,110``: 6).
    #: ``ecb``: D (the daq-iot appendix and its recorded ciphertext), X ``CEngery``: 2.
    aes_mode: AesMode = "cbc"
    #: Padding of the XML to a 16-byte multiple. ``zero``: NUL bytes (Z ``message.js:79-82``,
    #: C, R ``PaddingMode.Zeros``). ``pkcs7``: B ``encypt.go:9-13``, A ``PKCS5Padding``, D.
    #: ``ascii0``: ASCII ``'0'`` bytes, which is what R's captured frame really carries.
    #: Received text is always cut after its last ``>``, which undoes all three.
    padding: Padding = "zero"
    #: Login digest = MD5 of the two strings concatenated. ``sequence+key``: Z
    #: ``common/signal.js:879``, R ``Encryption.getMd5Hash``, C ``MD5Util.md5Encode``, Y (changed to
    #: it on 2013-06-06): every code base that uses the 68681616 frame. ``key+sequence``: Q
    #: ``src/Device.js:53`` and its recorded SUPCON challenge, E, B ``upload.go:141``,
    #: A ``AuthPacketHandler.java:151``, H: the SUPCON and 1F1F framings. The default follows
    #: the frame this module speaks.
    md5_order: Md5Order = "sequence+key"
    #: Hex digits of the digest: ``lower`` (Q, Z, B ``%x``, A ``%02x``, R ``x2``) or ``upper`` (C).
    md5_case: HexCase = "lower"
    #: What confirms a ``report``. ``any``: the first of continuous_ack (D), data_ack (Q
    #: ``src/signals/ack.temp.js``), report_ack (Z ``signal.js:892,930``), record_arrive (E),
    #: ``<ack>OK</ack>`` (B ``upload.go:83-91``, H); without one in time the report stays pending
    #: and is resent as ``continuous``. ``none``: the platform never acknowledges reports (A, Y);
    #: a report written to an authenticated connection counts as delivered. ``continuous`` packets
    #: always wait for their ack (D, E, Y, Q).
    report_ack: ReportAck = "any"
    #: Text of ``<type>``: ``operation`` repeats the operation (``request``, ``md5``, ``notify``:
    #: Q, Z, Y, C, D) or ``element`` names the element (``id_validate``, ``heart_beat``: A, B, X).
    #: Parsing accepts both.
    type_style: TypeStyle = "operation"
    #: Element carrying the building id: ``building_id`` (every source but one) or ``project_id`` (R).
    id_tag: IdTag = "building_id"
    #: ``parser`` (Z, Y, D, C, X) or ``parse`` (Q ``report.temp.js``, E's template). Parsing accepts both.
    parser_tag: ParserTag = "parser"
    #: Encoding of the XML text: ``utf-8`` normally (D "Character set: UTF-8", R, Q); ``gbk`` for
    #: platforms that declare GB2312 (Z's test requests). The declaration names it.
    encoding: Encoding = "utf-8"
    #: Start the text with ``<?xml version="1.0" encoding="…"?>`` (R, Q, Z templates; D's examples omit it).
    xml_declaration: bool = True
    #: ``error`` attribute of a good value: ``192`` (Z ``dataSaving.js:87-88`` "192为正确数据", E
    #: "192表示没有错误": both data centres that read it) or ``0`` (D).
    error_ok: str = "192"
    #: ``error`` attribute of a value the meter could not give (D: ``1`` = fault).
    error_fault: str = "1"


DEFAULT = Variant()


@dataclass(frozen=True, slots=True)
class VariantIssue:
    """One bad key of a ``variant`` mapping; the config layer adds file:line."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class VariantError(ValueError):
    """Every issue found in one ``variant`` mapping, all at once."""

    def __init__(self, issues: list[VariantIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(str(i) for i in issues))


_HINTS = get_type_hints(Variant)
_NAMES = [f.name for f in fields(Variant)]


def parse_variant(data: object) -> Variant:
    """The Variant of a plain mapping (from YAML); missing keys keep their defaults.

    Raises VariantError listing every unknown key (with a "did you mean"), every value outside
    its choices and every wrong type; no value is silently corrected.
    """
    if data is None:
        return DEFAULT
    if not isinstance(data, Mapping):
        raise VariantError([VariantIssue("variant", f"expected a mapping, got {type(data).__name__}")])
    issues: list[VariantIssue] = []
    values: dict[str, object] = {}
    for key, value in data.items():
        name = str(key)
        if name not in _HINTS:
            close = difflib.get_close_matches(name, _NAMES, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; known: {', '.join(_NAMES)}"
            issues.append(VariantIssue(name, f"unknown option{hint}"))
            continue
        hint = _HINTS[name]
        if hint is bool:
            if not isinstance(value, bool):
                issues.append(VariantIssue(name, f"expected true or false, got {value!r}"))
                continue
        elif hint is str:
            if isinstance(value, bool) or not isinstance(value, str | int):
                issues.append(VariantIssue(name, f"expected a string, got {value!r}"))
                continue
            value = str(value)
        else:
            choices = get_args(hint)
            if value not in choices:
                close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
                extra = f'; did you mean "{close[0]}"?' if close else ""
                issues.append(VariantIssue(name, f"{value!r} is not one of {', '.join(map(str, choices))}{extra}"))
                continue
        values[name] = value
    if issues:
        raise VariantError(issues)
    return Variant(**values)  # type: ignore[arg-type]  # each value checked against its Literal above
