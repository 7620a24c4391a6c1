"""An RS-485 line for the protocols pymodbus does not speak (DL/T 645, CJ/T 188), on pyserial.

One transaction at a time; the configured pause between requests; after a timeout the line is
waited out (``drain``) before anything else is sent, so a late reply is never taken as the next
answer; a port that disappears (USB adapter unplugged) is reopened on the next transaction. With
``--trace`` each frame written (FE wake-up bytes included) and every byte read are traced
(drivers/trace.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from drivers import trace
from drivers.errors import NoReply, NotConnected, cannot_open
from drivers.serialport import SerialPort, SerialSettings


class SerialLine:
    def __init__(
        self,
        settings: SerialSettings,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        pause: float = 0.0,
        drain: float | None = None,
        name: str = "",
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.retries = retries
        self.pause = pause
        self.drain = timeout if drain is None else drain
        self._port = SerialPort(settings, self._received, self._lost)
        self._rx = bytearray()
        self._event = asyncio.Event()
        self._lock = asyncio.Lock()
        self._quiet_until = 0.0
        self.requests = self.timeouts = self.bytes_in = self.bytes_out = 0
        self.garbled = 0  #: timed-out attempts that heard bytes, other than the echo of the request
        self.tracer = trace.Tracer(name or settings.device)  #: frame traces, named after the bus
        self._heard = bytearray()  # while tracing: the bytes received since the last trace line
        self._heard_at = 0.0

    def open(self) -> None:
        if self._port.is_open:
            return
        try:
            self._port.open()
        except Exception as exc:  # SerialException (an OSError), ValueError, and termios.error, which is neither
            raise cannot_open(self.settings.describe(), exc, parity=self.settings.parity) from None

    def _received(self, data: bytes) -> None:
        if not data:  # the other end of a pty went away
            self.close()
        self.bytes_in += len(data)
        self._rx += data
        if trace.ON:
            self._heard += data
            self._heard_at = time.monotonic()
        self._event.set()

    def _lost(self) -> None:
        self.close()
        self._event.set()

    def close(self) -> None:
        self._port.close()
        if trace.ON:
            self.tracer.flush()

    async def transact(self, frame: bytes, take: Callable[[bytearray], Any], *, retries: int | None = None) -> Any:
        """Send ``frame``; return what ``take`` finds in the received bytes (it removes what it used)."""
        async with self._lock:
            attempts = (self.retries if retries is None else retries) + 1
            for attempt in range(attempts):
                self.open()
                delay = self._quiet_until - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._rx.clear()
                self.requests += 1
                if trace.ON and self._heard:  # since the last transaction: a late reply, noise
                    self.tracer.stray(bytes(self._heard))
                    self._heard.clear()
                try:
                    self._port.write(frame)
                except OSError:
                    self.close()
                    raise NotConnected(f"lost {self.settings.describe()}") from None
                self.bytes_out += len(frame)
                heard_from = self.bytes_in
                if trace.ON:
                    self.tracer.sent(frame)
                deadline = time.monotonic() + self.timeout + len(frame) * self.settings.char_time
                outcome = "interrupted"  # for the trace: how the transaction ended
                try:
                    while True:
                        found = take(self._rx)
                        if found is not None:
                            outcome = ""
                            return found
                        if not self._port.is_open:
                            outcome = "lost"
                            raise NotConnected(f"lost {self.settings.describe()}")
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            outcome = "timeout"
                            break
                        self._event.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._event.wait(), remaining)
                finally:
                    self._quiet_until = time.monotonic() + self.pause + 3.5 * self.settings.char_time
                    if trace.ON:
                        self.tracer.heard(bytes(self._heard), last=self._heard_at, outcome=outcome)
                        self._heard.clear()
                self.timeouts += 1
                if self.bytes_in - heard_from not in (0, len(frame)):  # an adapter's echo alone is not noise
                    self.garbled += 1
                self._quiet_until = max(self._quiet_until, time.monotonic() + self.drain)
                if attempt + 1 == attempts:
                    raise NoReply(f"no reply in {self.timeout * 1000:g} ms")
            raise AssertionError("unreachable")


class LineReader:
    """What the DL/T 645 and CJ/T 188 readers share: one line, its counters, replies from one meter."""

    def __init__(self, line: SerialLine) -> None:
        self.line = line

    @property
    def requests(self) -> int:
        return self.line.requests

    @property
    def timeouts(self) -> int:
        return self.line.timeouts

    @property
    def garbled(self) -> int:
        return self.line.garbled

    def close(self) -> None:
        self.line.close()

    #: the protocol's frame splitter and wildcard address (set by each protocol's reader)
    take: Callable[[bytearray], Any]
    wildcard: str = ""

    def replies(self, address: str) -> Callable[[bytearray], Any]:
        """Take replies from this meter only: an echo of our own request, or another meter, is skipped."""
        take, wildcard = type(self).take, self.wildcard

        def from_meter(buffer: bytearray) -> Any:
            while (f := take(buffer)) is not None:
                if f.is_reply and (f.address == address or address == wildcard):
                    return f
            return None

        return from_meter
