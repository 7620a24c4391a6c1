"""Frame traces: every frame a transport sends or receives, in hex, per bus, with timing.

Off by default; ``--trace`` on ``read``, ``scan`` and ``run`` turns it on (collector/cli/logs.py calls
``enable``). ``-v`` alone does not: debug logging of a daemon polling hundreds of values a second
must not turn into a hex dump of every poll. The lines go to the logger ``drivers.trace`` at DEBUG
level (syslog priority 7 under journald)::

    rs485-1 TX 8 bytes (idle 812.4 ms): 01 03 00 00 00 02 C4 0B
    rs485-1 RX 9 bytes after 24.1 ms: 01 03 04 43 66 80 00 AF 4A
    rs485-1 RX timeout after 500.3 ms, 3 bytes: 01 03 04
    rs485-1 RX 9 bytes outside a transaction: 01 03 04 43 66 80 00 AF 4A

TX: the time since the previous frame on that bus ended (``first`` for the first). RX: the time from
the end of sending the request to the last byte heard; on a timeout, the time waited and whatever
was heard (nothing, a partial frame, noise). Bytes heard between transactions (a late reply during
the wait after a timeout) are shown before the next request.

Bounded in volume (docs/operations.md, "Frame traces"):

* a frame is shown up to ``MAX_BYTES`` bytes, then ``… (+K bytes)``;
* each bus writes at most ``RATE`` lines a second, after a burst of ``BURST`` (a token bucket);
  what it leaves out is counted and said in one line before its next trace line (or when the bus
  is closed): ``rs485-1: 312 trace lines suppressed (more than 20 a second)``;
* ``LINES_MAX`` lines in all, then tracing turns itself off, saying so in a WARNING: a ``run
  --trace`` forgotten on site cannot fill the journal or the SD card.

When tracing is off the cost is one test of the module attribute ``ON`` per frame
(``if trace.ON:``); nothing is formatted and no clock is read.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

MAX_BYTES = 260  #: bytes of one frame shown: the largest Modbus frame (a TCP ADU) fits whole
RATE = 20.0  #: trace lines a second per bus, sustained
BURST = 60  #: trace lines a bus may write at once, e.g. a `read` of a few meters
LINES_MAX = 100_000  #: trace lines in all (10 to 80 MB of text), then tracing turns itself off

#: Is tracing on? Transports test this before calling anything here.
ON = False

_left = 0  # lines left of LINES_MAX


def enable(on: bool = True, *, lines: int = LINES_MAX) -> None:
    """Turn frame tracing on, for at most ``lines`` lines, or off."""
    global ON, _left
    ON = on
    _left = lines
    log.setLevel(logging.DEBUG if on else logging.NOTSET)


def hexdump(data: bytes, limit: int = MAX_BYTES) -> str:
    """``01 03 00 00 00 02 C4 0B``; past ``limit`` bytes: ``… (+K bytes)``."""
    text = data[:limit].hex(" ").upper()
    return f"{text} … (+{len(data) - limit} bytes)" if len(data) > limit else text


def duration(seconds: float) -> str:
    """``24.1 ms`` below a second, ``1.00 s`` from there."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


class Tracer:
    """The trace of one bus: its name, when its last frame was, its share of the rate.

    A transport calls ``sent`` as a request goes out and ``heard`` when the transaction ends (its
    reply, or all it heard before the timeout), only ``if trace.ON``.
    """

    __slots__ = ("_idle_since", "_refilled", "_sent_at", "_suppressed", "_tokens", "bus")

    def __init__(self, bus: str) -> None:
        self.bus = bus  #: the bus's name from the config, else its port or host:port
        self._sent_at = 0.0  # monotonic time the last request went out
        self._idle_since = 0.0  # monotonic time the last frame on the bus ended (0: none yet)
        self._tokens = float(BURST)
        self._refilled = time.monotonic()
        self._suppressed = 0

    def sent(self, data: bytes) -> None:
        """A request frame, as written to the wire."""
        now = time.monotonic()
        idle = f"idle {duration(now - self._idle_since)}" if self._idle_since else "first"
        self._sent_at = self._idle_since = now
        if self._admit(now):
            self._line("%s TX %d bytes (%s): %s", self.bus, len(data), idle, hexdump(data))

    def heard(self, data: bytes, *, last: float = 0.0, outcome: str = "") -> None:
        """What was received for the request last ``sent``. ``outcome``: "" for a reply, else
        ``timeout``, ``refused`` (pymodbus refused the reply: another unit or transaction id),
        ``garbled`` (it could not decode it), ``lost`` (the port or connection went away) or
        ``interrupted`` (cancelled). ``last``: the monotonic time of the last byte (default: now)."""
        now = time.monotonic()
        if outcome:  # the time waited, and what came in meanwhile
            self._idle_since = now
            waited = duration(now - self._sent_at)
            if not self._admit(now):
                return
            if data:
                self._line("%s RX %s after %s, %d bytes: %s", self.bus, outcome, waited, len(data), hexdump(data))
            else:
                self._line("%s RX %s after %s, no bytes", self.bus, outcome, waited)
            return
        end = last or now
        self._idle_since = end
        if self._admit(now):
            self._line("%s RX %d bytes after %s: %s", self.bus, len(data), duration(end - self._sent_at), hexdump(data))

    def stray(self, data: bytes) -> None:
        """Bytes that came in while no request was waiting: a late reply, an echo, noise."""
        now = time.monotonic()
        if self._admit(now):
            self._line("%s RX %d bytes outside a transaction: %s", self.bus, len(data), hexdump(data))

    def _admit(self, now: float) -> bool:
        """Take one line from this bus's bucket; say first how many were left out before it."""
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return False
        self._tokens -= 1.0
        self.flush()
        return True

    def flush(self) -> None:
        """Say how many lines were left out since the last one written, if any (also when the bus is
        closed, so the count of a trace's last second is not lost)."""
        if self._suppressed:
            self._line("%s: %d trace lines suppressed (more than %g a second)", self.bus, self._suppressed, RATE)
            self._suppressed = 0

    def _line(self, msg: str, *args: object) -> None:
        global ON, _left
        if not ON:  # the budget ran out within this transaction
            return
        _left -= 1
        log.debug(msg, *args)
        if _left <= 0:
            ON = False
            log.warning("frame trace budget used up: tracing is off (start again with --trace)")
