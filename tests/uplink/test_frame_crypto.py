"""Round trips for every variant option, and stream decoding of garbage, partial and bad frames."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import get_args, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.uplink import crypto
from collector.uplink.crypto import CryptoError, decrypt, encrypt, login_digest
from collector.uplink.frame import Frame, FrameDecoder, FrameError, Skipped, decode_frame, encode_frame
from collector.uplink.variant import DEFAULT, Variant, VariantError, parse_variant

HINTS = get_type_hints(Variant)
CHOICES = {f.name: get_args(HINTS[f.name]) for f in fields(Variant) if get_args(HINTS[f.name])}
BACKENDS = ["pure-python"] + (["cryptography"] if crypto.BACKEND == "cryptography" else [])

variants = st.builds(Variant, **{name: st.sampled_from(choices) for name, choices in CHOICES.items()})
# No lone surrogates (category Cs): they have no UTF-8 form, so no XML text holds one.
xml_texts = st.text(
    alphabet=st.characters(blacklist_characters="<>\x00", blacklist_categories=["Cs"]), max_size=300
).map(lambda s: f"<root>{s}</root>".encode())
keys = st.binary(min_size=16, max_size=16)


@settings(max_examples=60, deadline=None)
@given(variants, xml_texts, keys, st.integers(0, 0xFFFFFFFF))
def test_round_trip_every_variant(variant: Variant, text: bytes, key: bytes, seq: int) -> None:
    payload = encrypt(text, key, variant)
    assert len(payload) % 16 == 0
    frame = decode_frame(encode_frame(payload, seq, variant), replace(variant, crc_strict=True))
    assert (frame.seq, frame.payload) == (seq, payload)
    assert decrypt(frame.payload, key, variant) == text


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["cbc", "ecb"]), st.sampled_from(["zero", "pkcs7", "ascii0"]), xml_texts, keys)
def test_backends_agree(mode: str, padding: str, text: bytes, key: bytes) -> None:
    v = parse_variant({"aes_mode": mode, "padding": padding})
    outs = {b: encrypt(text, key, v, b) for b in BACKENDS}
    assert len(set(outs.values())) == 1
    assert all(decrypt(outs[b], key, v, b) == text for b in BACKENDS)


def test_padding_sizes() -> None:
    aligned = b"<a>" + b"x" * 9 + b"</a>"  # 16 bytes
    assert len(crypto.pad(aligned, Variant(padding="zero"))) == 16
    assert len(crypto.pad(aligned, Variant(padding="pkcs7"))) == 32
    assert crypto.pad(b"<a/>", Variant(padding="ascii0")).endswith(b"0" * 12)


def test_other_crc_forms_are_accepted_unless_strict_and_reported() -> None:
    sender = Variant(crc_span="data", crc_order="little")
    data = encode_frame(os.urandom(32), 7, sender)
    assert str(decode_frame(data, DEFAULT).crc_form) == "span data, little-endian"
    with pytest.raises(FrameError, match="bad CRC"):
        decode_frame(data, Variant(crc_strict=True))


def test_reversed_markers() -> None:
    v = Variant(markers="reversed")
    data = encode_frame(bytes(16), 1, v)
    assert data.startswith(b"\x55\xaa\x55\xaa") and data.endswith(b"\x68\x68\x16\x16")
    assert decode_frame(data, v).seq == 1


def frames(n: int, v: Variant = DEFAULT) -> list[bytes]:
    return [encode_frame(bytes([i]) * 16 * (i + 1), i, v) for i in range(n)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=20))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int]) -> None:
    stream = b"".join(frames(4))
    dec, got, pos = FrameDecoder(DEFAULT), [], 0
    for c in [*cuts, len(stream)]:
        got += dec.feed(stream[pos : pos + c])
        pos += c
    assert [e.seq for e in got if isinstance(e, Frame)] == [0, 1, 2, 3]
    assert not [e for e in got if isinstance(e, Skipped)]


def test_garbage_before_and_between_frames_is_skipped_with_a_reason() -> None:
    a, b = frames(2)
    events = FrameDecoder(DEFAULT).feed(b"\x00junk\x68\x68" + a + b"more junk" + b)
    assert [e.seq for e in events if isinstance(e, Frame)] == [0, 1]
    reasons = [e.reason for e in events if isinstance(e, Skipped)]
    assert reasons and all("head" in r for r in reasons)


def test_bad_crc_resyncs_to_the_next_frame() -> None:
    a, b = frames(2)
    bad = bytearray(a)
    bad[-6] ^= 0xFF
    events = FrameDecoder(DEFAULT).feed(bytes(bad) + b)
    assert [e.seq for e in events if isinstance(e, Frame)] == [1]
    assert any("bad CRC" in e.reason for e in events if isinstance(e, Skipped))


def test_truncated_frame_followed_by_a_good_one() -> None:
    a, b = frames(2)
    events = FrameDecoder(DEFAULT).feed(a[:20] + b + a)
    assert [e.seq for e in events if isinstance(e, Frame)] == [1, 0]


def test_length_beyond_the_limit_is_not_waited_for() -> None:
    a = frames(1)[0]
    huge = b"\x68\x68\x16\x16" + (10_000_000).to_bytes(4, "little") + b"\x00" * 8
    dec = FrameDecoder(DEFAULT, max_payload=4096)
    events = dec.feed(huge + a)
    assert any("exceeds the limit" in e.reason for e in events if isinstance(e, Skipped))
    assert [e.seq for e in events if isinstance(e, Frame)] == [0]
    assert dec.buffered == 0


def test_partial_frame_is_kept_then_discarded_on_idle() -> None:
    dec = FrameDecoder(DEFAULT)
    assert dec.feed(frames(1)[0][:30]) == []
    assert dec.buffered == 30
    skipped = dec.discard_partial()
    assert skipped is not None and skipped.count == 30 and dec.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    dec = FrameDecoder(DEFAULT)
    dec.feed(data)
    dec.feed(data)
    with pytest.raises(FrameError):
        decode_frame(data, DEFAULT)


def test_decrypt_refuses_bad_input() -> None:
    with pytest.raises(CryptoError):
        decrypt(b"x" * 15, b"k" * 16, DEFAULT)
    with pytest.raises(CryptoError, match="16 bytes"):
        encrypt(b"<a/>", b"short", DEFAULT)
    with pytest.raises(CryptoError, match="no '>'"):
        decrypt(encrypt(b"<a/>", b"k" * 16, DEFAULT), b"j" * 16, DEFAULT)  # wrong key: noise (could hold '>')


def test_md5_orders() -> None:
    import hashlib

    assert login_digest("123", b"key", Variant(md5_order="sequence+key")) == hashlib.md5(b"123key").hexdigest()
    assert login_digest("123", b"key", Variant(md5_order="key+sequence")) == hashlib.md5(b"key123").hexdigest()


def test_parse_variant_defaults_and_errors() -> None:
    assert parse_variant(None) == DEFAULT
    assert parse_variant({}) == DEFAULT
    assert parse_variant({"aes_mode": "ecb", "error_ok": 0}).error_ok == "0"
    with pytest.raises(VariantError) as err:
        parse_variant({"aes_mod": "ecb", "padding": "pkcs5", "crc_strict": "yes", "md5_order": "key-sequence"})
    issues = {i.key: i.message for i in err.value.issues}
    assert set(issues) == {"aes_mod", "padding", "crc_strict", "md5_order"}
    assert 'did you mean "aes_mode"' in issues["aes_mod"]
    assert "zero, pkcs7, ascii0" in issues["padding"]
    assert 'did you mean "key+sequence"' in issues["md5_order"]
    with pytest.raises(VariantError, match="mapping"):
        parse_variant(["cbc"])
