"""The wall clock on a gateway without a real-time clock.

A Raspberry Pi boots with the time it last saved (fake-hwclock) or 1970, and steps to the right
time when NTP answers, possibly hours later and possibly backwards. Two things follow:

* ``synchronised()``: readings taken before NTP has set the clock are flagged ``"clock": "unsynced"``.
  The kernel knows: adjtimex() returns TIME_ERROR (5) while the clock is unsynchronised, and
  systemd-timesyncd / chrony / ntpd clear that state when they discipline the clock.
* ``ClockWatch``: compares the wall clock with the monotonic clock every second; a difference that
  appears suddenly is a step, reported once so the scheduler can realign instead of firing a burst
  of missed polls (forward) or waiting out the step silently (backward).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TIME_ERROR = 5
TIMESYNCD_FLAG = "/run/systemd/timesync/synchronized"
EARLIEST_PLAUSIBLE = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a clock before the build is never synchronised

_libc: ctypes.CDLL | None = None


def _adjtimex_state() -> int | None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # larger than struct timex on every ABI; modes = 0: read only
        state: int = _libc.adjtimex(buf)
        return state
    except (OSError, AttributeError):
        return None


def synchronised(check: str = "kernel") -> bool:
    """Is the wall clock to be trusted? ``check``: "kernel" (adjtimex) or "none" (always trusted)."""
    if time.time() < EARLIEST_PLAUSIBLE:
        return False
    if check == "none":
        return True
    state = _adjtimex_state()
    if state is None or state < 0:
        # adjtimex denied (a seccomp filter without it): systemd-timesyncd's flag is the next witness.
        return os.path.exists(TIMESYNCD_FLAG)
    return state != TIME_ERROR


class ClockWatch:
    """Reports wall-clock steps larger than ``threshold`` seconds to ``on_step(delta, before, after)``."""

    def __init__(
        self, on_step: Callable[[float, float, float], None], threshold: float = 2.0, period: float = 1.0
    ) -> None:
        self.on_step = on_step
        self.threshold = threshold
        self.period = period
        self.steps = 0

    async def run(self) -> None:
        wall, mono = time.time(), time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            wall2, mono2 = time.time(), time.monotonic()
            delta = (wall2 - wall) - (mono2 - mono)
            if abs(delta) > self.threshold:
                self.steps += 1
                try:
                    self.on_step(delta, wall, wall2)
                except Exception:
                    log.exception("handling a clock step")
            wall, mono = wall2, mono2
