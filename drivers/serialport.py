"""A serial port: how it is set (``SerialSettings``, the one place for that), and the port itself,
opened exclusively and non-blocking and read from the event loop (``SerialPort``).

Every serial line uses both: the Modbus RTU transport (its settings; pymodbus opens the port), the
DL/T 645 and CJ/T 188 line (drivers/serialline.py) and the simulator's slave side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PARITIES = ("N", "E", "O")


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """``/dev/ttyUSB0 9600 8N1``: the device, its baud rate and character format."""

    device: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"  #: N, E or O
    stopbits: int = 1

    @property
    def char_time(self) -> float:
        """Seconds on the wire for one character: start bit, data bits, parity bit (if any), stop bits."""
        return (1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits) / self.baudrate

    def describe(self) -> str:
        return f"{self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def pyserial(self) -> dict[str, Any]:
        """pyserial's options for the port. Parity is handled here alone: a pty refuses parity, which
        drivers.errors.cannot_open explains from the ``parity`` it is given."""
        if self.parity not in PARITIES:
            raise ValueError(f"parity {self.parity!r} is not N, E or O")
        return {"baudrate": self.baudrate, "bytesize": self.bytesize, "parity": self.parity, "stopbits": self.stopbits}


class SerialPort:
    """A pyserial port opened exclusively and non-blocking; what arrives is handed to ``received``
    from the event loop (``b""``: the other end of a pty went away). When reading fails (a USB adapter
    unplugged) the port stops being read and ``lost`` is called; closing it is the owner's call."""

    def __init__(self, settings: SerialSettings, received: Callable[[bytes], None], lost: Callable[[], None]) -> None:
        self.settings = settings
        self._received = received
        self._lost = lost
        self._port: Any = None
        self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port (raises what pyserial raises: SerialException, ValueError, termios.error)."""
        import serial  # pyserial

        port = serial.Serial(self.settings.device, **self.settings.pyserial(), timeout=0, exclusive=True)
        self._port, self._fd = port, port.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def write(self, data: bytes) -> None:
        """Send ``data``; raises OSError when the port is gone."""
        os.write(self._fd, data)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            return
        except OSError:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._lost()
            return
        self._received(data)

    def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(Exception):
                self._port.close()
        self._port, self._fd = None, -1


def locked_by(device: str) -> list[str] | None:
    """None when ``device`` is free to open exclusively (or cannot be opened at all: the opener will
    say why); else who holds it (``holders``), as far as this user can see: possibly []."""
    import fcntl

    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what pyserial's exclusive=True takes
    except BlockingIOError:
        return holders(device)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops our lock
    return None


def holders(device: str) -> list[str]:
    """Who else has ``device`` open: ``pid 1234 (meter-collector run -c /etc/meter-collector/site.yaml)``.
    From /proc: as root every process, as another user only that user's own (then the port's
    exclusive lock still refuses a second opener, without a name)."""
    try:
        target = os.path.realpath(device)
    except OSError:
        return []
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
            held = any(_link(fd.path) == target for fd in fds)
        except OSError:
            continue  # gone, or not ours to look at
        if held:
            found.append(f"pid {entry.name} ({_cmdline(entry.name)})")
    return found


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    words = [
        os.path.basename(a.decode(errors="replace")) if i == 0 else a.decode(errors="replace")
        for i, a in enumerate(argv)
    ]
    if len(words) > 2 and words[0].startswith("python") and words[1] == "-m" and words[2] == "collector.cli":
        words = ["meter-collector", *words[3:]]  # run as a module: say what it is
    return " ".join(words)[:200]
