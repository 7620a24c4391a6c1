"""AES-128 block cipher in pure Python (FIPS-197), table-driven.

A fallback for hosts where the ``cryptography`` wheel is missing (armv6l Raspberry Pi, exotic
libc): about two orders of magnitude slower than OpenSSL, which is still well inside a report
period (docs/datacenter.md §Crypto has the measurements). Only the block functions live here;
modes and padding are in crypto.py. Checked by the FIPS-197 C.1 vector and the data centres'
recorded ciphertexts (tests/uplink/test_crypto.py).
"""

from __future__ import annotations


def _build_tables() -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
    def xtime(a: int) -> int:
        a <<= 1
        return (a ^ 0x11B) if a & 0x100 else a

    def mul(a: int, b: int) -> int:
        out = 0
        while b:
            if b & 1:
                out ^= a
            a = xtime(a)
            b >>= 1
        return out

    # Multiplicative inverse via exponentiation by 3's powers (generator 3 of GF(2^8)*).
    exp = [0] * 255
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= xtime(x)  # x *= 3
    sbox = [0] * 256
    for a in range(256):
        inv = 0 if a == 0 else exp[(255 - log[a]) % 255]
        s = inv
        for shift in (1, 2, 3, 4):
            s ^= ((inv << shift) | (inv >> (8 - shift))) & 0xFF
        sbox[a] = s ^ 0x63
    inv_sbox = [0] * 256
    for a, s in enumerate(sbox):
        inv_sbox[s] = a

    te0 = [0] * 256
    td0 = [0] * 256
    for a in range(256):
        s = sbox[a]
        te0[a] = (mul(s, 2) << 24) | (s << 16) | (s << 8) | mul(s, 3)
        si = inv_sbox[a]
        td0[a] = (mul(si, 14) << 24) | (mul(si, 9) << 16) | (mul(si, 13) << 8) | mul(si, 11)

    def rotations(t0: list[int]) -> list[list[int]]:
        out = [t0]
        for _ in range(3):
            prev = out[-1]
            out.append([((w >> 8) | (w << 24)) & 0xFFFFFFFF for w in prev])
        return out

    return sbox, inv_sbox, rotations(te0), rotations(td0)


_S, _SI, (_TE0, _TE1, _TE2, _TE3), (_TD0, _TD1, _TD2, _TD3) = _build_tables()
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)


class AES128:
    """One expanded 16-byte key; encrypts and decrypts single 16-byte blocks."""

    __slots__ = ("_dk", "_ek")

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError(f"AES-128 needs a 16-byte key, got {len(key)} bytes")
        w = [int.from_bytes(key[i : i + 4], "big") for i in range(0, 16, 4)]
        for i in range(4, 44):
            t = w[i - 1]
            if i % 4 == 0:
                t = ((t << 8) | (t >> 24)) & 0xFFFFFFFF
                t = (_S[t >> 24] << 24) | (_S[(t >> 16) & 255] << 16) | (_S[(t >> 8) & 255] << 8) | _S[t & 255]
                t ^= _RCON[i // 4 - 1] << 24
            w.append(w[i - 4] ^ t)
        self._ek = w
        # Equivalent inverse cipher: round keys in reverse, InvMixColumns on the inner ones.
        dk: list[int] = []
        for r in range(10, -1, -1):
            for c in range(4):
                k = w[4 * r + c]
                if 0 < r < 10:
                    k = _TD0[_S[k >> 24]] ^ _TD1[_S[(k >> 16) & 255]] ^ _TD2[_S[(k >> 8) & 255]] ^ _TD3[_S[k & 255]]
                dk.append(k)
        self._dk = dk

    def encrypt_block(self, block: bytes) -> bytes:
        k = self._ek
        s0 = int.from_bytes(block[0:4], "big") ^ k[0]
        s1 = int.from_bytes(block[4:8], "big") ^ k[1]
        s2 = int.from_bytes(block[8:12], "big") ^ k[2]
        s3 = int.from_bytes(block[12:16], "big") ^ k[3]
        te0, te1, te2, te3 = _TE0, _TE1, _TE2, _TE3
        for r in range(4, 40, 4):
            t0 = te0[s0 >> 24] ^ te1[(s1 >> 16) & 255] ^ te2[(s2 >> 8) & 255] ^ te3[s3 & 255] ^ k[r]
            t1 = te0[s1 >> 24] ^ te1[(s2 >> 16) & 255] ^ te2[(s3 >> 8) & 255] ^ te3[s0 & 255] ^ k[r + 1]
            t2 = te0[s2 >> 24] ^ te1[(s3 >> 16) & 255] ^ te2[(s0 >> 8) & 255] ^ te3[s1 & 255] ^ k[r + 2]
            t3 = te0[s3 >> 24] ^ te1[(s0 >> 16) & 255] ^ te2[(s1 >> 8) & 255] ^ te3[s2 & 255] ^ k[r + 3]
            s0, s1, s2, s3 = t0, t1, t2, t3
        s = _S
        return b"".join(
            (((s[a >> 24] << 24) | (s[(b >> 16) & 255] << 16) | (s[(c >> 8) & 255] << 8) | s[d & 255]) ^ kk).to_bytes(
                4, "big"
            )
            for a, b, c, d, kk in (
                (s0, s1, s2, s3, k[40]),
                (s1, s2, s3, s0, k[41]),
                (s2, s3, s0, s1, k[42]),
                (s3, s0, s1, s2, k[43]),
            )
        )

    def decrypt_block(self, block: bytes) -> bytes:
        k = self._dk
        s0 = int.from_bytes(block[0:4], "big") ^ k[0]
        s1 = int.from_bytes(block[4:8], "big") ^ k[1]
        s2 = int.from_bytes(block[8:12], "big") ^ k[2]
        s3 = int.from_bytes(block[12:16], "big") ^ k[3]
        td0, td1, td2, td3 = _TD0, _TD1, _TD2, _TD3
        for r in range(4, 40, 4):
            t0 = td0[s0 >> 24] ^ td1[(s3 >> 16) & 255] ^ td2[(s2 >> 8) & 255] ^ td3[s1 & 255] ^ k[r]
            t1 = td0[s1 >> 24] ^ td1[(s0 >> 16) & 255] ^ td2[(s3 >> 8) & 255] ^ td3[s2 & 255] ^ k[r + 1]
            t2 = td0[s2 >> 24] ^ td1[(s1 >> 16) & 255] ^ td2[(s0 >> 8) & 255] ^ td3[s3 & 255] ^ k[r + 2]
            t3 = td0[s3 >> 24] ^ td1[(s2 >> 16) & 255] ^ td2[(s1 >> 8) & 255] ^ td3[s0 & 255] ^ k[r + 3]
            s0, s1, s2, s3 = t0, t1, t2, t3
        s = _SI
        return b"".join(
            (((s[a >> 24] << 24) | (s[(b >> 16) & 255] << 16) | (s[(c >> 8) & 255] << 8) | s[d & 255]) ^ kk).to_bytes(
                4, "big"
            )
            for a, b, c, d, kk in (
                (s0, s3, s2, s1, k[40]),
                (s1, s0, s3, s2, k[41]),
                (s2, s1, s0, s3, k[42]),
                (s3, s2, s1, s0, k[43]),
            )
        )
