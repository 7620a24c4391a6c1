"""The slave side of a serial line, for the simulator: bytes in, frames out, replies after a delay.

A protocol gives ``handle(buffer)``, which takes complete requests off the buffer and returns the
replies to send, each with the delay before it goes out (the wire time at the emulated baud rate,
a slow meter's turnaround). Silence is a reply that is never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any


class SerialPortServer:
    def __init__(self, device: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1) -> None:
        self.device = device
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self._fd = -1
        self._buffer = bytearray()
        self._last_rx = 0.0
        self._port: Any = None

    def handle(self, buffer: bytearray) -> list[tuple[bytes, float]]:
        raise NotImplementedError

    async def start(self) -> None:
        import serial  # pyserial

        port = serial.Serial(
            self.device, baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits, timeout=0, exclusive=True
        )
        self._port, self._fd = port, port.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            return
        except OSError:
            # The other side of a pty went away; stop reading rather than spin.
            asyncio.get_running_loop().remove_reader(self._fd)
            return
        now = time.monotonic()
        if self._buffer and now - self._last_rx > 0.05:
            self._buffer.clear()  # a silence ended the previous (incomplete) frame
        self._last_rx = now
        self._buffer += data
        for reply, delay in self.handle(self._buffer):
            asyncio.get_running_loop().call_later(delay, self._write, reply)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, data)

    async def stop(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
        if self._port is not None:
            self._port.close()
            self._port = None
        self._fd = -1


class FrameSlaveServer(SerialPortServer):
    """A serial slave for a frame protocol: ``take`` splits requests off the buffer, ``answer`` replies."""

    def __init__(
        self, take: Any, answer: Any, device: str, baudrate: int = 2400, parity: str = "N", delay: Any = None
    ) -> None:
        super().__init__(device, baudrate, parity)
        self.take = take
        self.answer = answer
        self.delay = delay or (lambda request, reply: 0.0)

    def handle(self, buffer: bytearray) -> list[tuple[bytes, float]]:
        out = []
        while (request := self.take(buffer)) is not None:
            reply = self.answer(request)
            if reply is not None:
                out.append((reply, self.delay(request, reply)))
        return out
