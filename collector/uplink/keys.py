"""The data centre's key files: read the same way by `check` (collector/config.py) and by the daemon
at start and reload (collector/daemon/datacenter.py). A message names the file, never its bytes."""

from __future__ import annotations

AES_KEY_BYTES = 16  #: AES-128 (docs/datacenter.md, "Crypto")


class KeyFileError(ValueError):
    """A key file that cannot be used, and why: ``kind`` is "unreadable", "empty" or "length"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_key_file(path: str, length: int | None) -> bytes:
    """The key in ``path``, a final newline left out; ``length``: the bytes it must hold (None: any)."""
    try:
        with open(path, "rb") as f:
            key = f.read(4096).rstrip(b"\r\n")
    except OSError as exc:
        raise KeyFileError(f"{path} cannot be read ({exc.strerror})", "unreadable") from None
    if not key:
        raise KeyFileError(f"{path} is empty: write the key the platform assigned into it", "empty")
    if length is not None and len(key) != length:
        raise KeyFileError(f"{path} holds {len(key)} bytes; the AES-128 key must be {length}", "length")
    return key
