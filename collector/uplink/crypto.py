"""AES-128 of the frame's 指令内容 and the MD5 login digest, per Variant.

The only importer of ``cryptography`` (OpenSSL; manylinux wheels on PyPI for x86_64, aarch64 and
armv7l). Where it is not installed (armv6l Raspberry Pi: no wheel, and building it needs Rust)
the pure-Python block cipher in ``_aes`` takes over: ~800× slower, 67 ms for a 32 KiB report on
the development machine, still small beside a report period (docs/datacenter.md §Crypto).

Modes (docs/datacenter.md §Crypto): CBC with IV = key (R, C, Z, Q, B, A) or ECB (D, X); padding
with NULs (Z ``common/message.js:79-82``, C, R's declared mode), PKCS#7 (B, A, D) or ASCII '0'
(what R's captured frame carries). Decryption cuts the text after its last ``>``, which undoes
every padding seen (reference §3; Z turns trailing NULs into spaces, ``message.js:159-164``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from collector.uplink.variant import Variant

BLOCK = 16

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    BACKEND = "cryptography"
except ImportError:  # pragma: no cover - exercised on hosts without the wheel
    BACKEND = "pure-python"


class CryptoError(ValueError):
    """A key of the wrong size, a ciphertext that is not whole blocks, or text that does not decrypt to XML."""


def _check_key(key: bytes) -> None:
    if len(key) != BLOCK:
        raise CryptoError(f"the AES-128 key must be 16 bytes, got {len(key)}")


def pad(plain: bytes, variant: Variant) -> bytes:
    """``plain`` padded to a whole number of blocks. Zero and '0' padding add nothing to an aligned
    text; PKCS#7 always adds 1…16 bytes."""
    short = -len(plain) % BLOCK
    if variant.padding == "pkcs7":
        n = short or BLOCK
        return plain + bytes([n]) * n
    filler = b"\x00" if variant.padding == "zero" else b"0"
    return plain + filler * short


def unpad(text: bytes) -> bytes:
    """The XML text before its padding: everything up to and including the last ``>``."""
    end = text.rfind(b">")
    if end < 0:
        raise CryptoError("the decrypted text holds no '>': wrong key or AES mode?")
    return text[: end + 1]


def _pure(key: bytes, variant: Variant, encrypt: bool) -> Callable[[bytes], bytes]:
    from collector.uplink._aes import AES128

    aes = AES128(key)
    block_fn = aes.encrypt_block if encrypt else aes.decrypt_block

    def run(data: bytes) -> bytes:
        out = []
        if variant.aes_mode == "ecb":
            for i in range(0, len(data), BLOCK):
                out.append(block_fn(data[i : i + BLOCK]))
            return b"".join(out)
        prev = int.from_bytes(key, "big")
        for i in range(0, len(data), BLOCK):
            chunk = data[i : i + BLOCK]
            if encrypt:
                c = block_fn((int.from_bytes(chunk, "big") ^ prev).to_bytes(BLOCK, "big"))
                out.append(c)
                prev = int.from_bytes(c, "big")
            else:
                out.append((int.from_bytes(block_fn(chunk), "big") ^ prev).to_bytes(BLOCK, "big"))
                prev = int.from_bytes(chunk, "big")
        return b"".join(out)

    return run


def _raw(key: bytes, variant: Variant, encrypt: bool, data: bytes, backend: str) -> bytes:
    if backend == "cryptography" and BACKEND == "cryptography":
        mode = modes.CBC(key) if variant.aes_mode == "cbc" else modes.ECB()
        cipher = Cipher(algorithms.AES(key), mode)
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        return ctx.update(data) + ctx.finalize()
    return _pure(key, variant, encrypt)(data)


def encrypt(plain: bytes, key: bytes, variant: Variant, backend: str = BACKEND) -> bytes:
    """The 指令内容 for an XML text: padded per variant, AES-128 in the variant's mode.
    ``backend`` (tests): ``cryptography`` when installed, or ``pure-python``."""
    _check_key(key)
    return _raw(key, variant, True, pad(plain, variant), backend)


def decrypt(cipher: bytes, key: bytes, variant: Variant, backend: str = BACKEND) -> bytes:
    """The XML text of a 指令内容, padding removed (``unpad``)."""
    _check_key(key)
    if not cipher or len(cipher) % BLOCK:
        raise CryptoError(f"ciphertext of {len(cipher)} bytes is not whole AES blocks")
    return unpad(_raw(key, variant, False, cipher, backend))


def login_digest(sequence: str, key: bytes, variant: Variant) -> str:
    """The ``<md5>`` answer to a challenge: MD5 of key and sequence concatenated in the variant's
    order, as 32 hex digits in its case (Q ``src/Device.js:53`` key+sequence, Z
    ``common/signal.js:879`` sequence+key)."""
    seq = sequence.encode("utf-8")
    data = key + seq if variant.md5_order == "key+sequence" else seq + key
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return digest.upper() if variant.md5_case == "upper" else digest
