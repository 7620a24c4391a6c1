"""The slave side of a serial line, for the simulator: bytes in, frames out, replies after a delay.

A protocol gives ``handle(buffer)``, which takes complete requests off the buffer and returns the
replies to send, each with the delay before it goes out (the wire time at the emulated baud rate,
a slow meter's turnaround). Silence is a reply that is never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from drivers.serialport import SerialPort, SerialSettings


class SerialPortServer:
    def __init__(self, device: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1) -> None:
        self.settings = SerialSettings(device, baudrate, parity=parity, stopbits=stopbits)
        self._buffer = bytearray()
        self._last_rx = 0.0
        self._port = SerialPort(self.settings, self._received, lambda: None)  # a pty gone: stop reading

    def handle(self, buffer: bytearray) -> list[tuple[bytes, float]]:
        raise NotImplementedError

    async def start(self) -> None:
        self._port.open()

    def _received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._buffer and now - self._last_rx > 0.05:
            self._buffer.clear()  # a silence ended the previous (incomplete) frame
        self._last_rx = now
        self._buffer += data
        for reply, delay in self.handle(self._buffer):
            asyncio.get_running_loop().call_later(delay, self._write, reply)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._port.write(data)

    async def stop(self) -> None:
        self._port.close()


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
