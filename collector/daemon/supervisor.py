"""Supervision: every long-running task of the daemon has one owner that logs, restarts and reports it.

An asyncio task that dies with an exception nobody awaits leaves a daemon that looks alive and does
nothing. Here each loop (the writer, the MQTT pump, the ack flush, retention, health, the clock
watch, each bus worker) runs under ``Supervisor.start``: an exception is logged once per distinct
cause (with its traceback the first time), the loop is started again after a backoff (1 s doubling
to 60 s), and a loop that keeps failing shows in ``failing()``: the health payload, the systemd
status line and the watchdog (which stops being pinged, so systemd restarts the process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
HEALTHY_AFTER = 60.0  #: a loop that ran this long without failing starts its backoff again
FAILING_AFTER = 3  #: failures in a row after which a loop counts as failing
CANCEL_AGAIN = 1.0  #: seconds after which a task that is still running on stop is cancelled again


@dataclass
class TaskState:
    name: str
    restarts: int = 0  #: failures since the daemon started
    failures_in_row: int = 0
    last_error: str = ""
    last_failure: float | None = None  #: wall-clock seconds


class Supervisor:
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._on_change = on_change

    def start(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``loop()`` as task ``name`` for as long as the supervisor runs, restarting it when it ends."""
        self.states[name] = TaskState(name)
        self._tasks[name] = asyncio.create_task(self._keep(name, loop), name=name)

    async def _keep(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        state = self.states[name]
        delay = BACKOFF_FIRST
        while True:
            began = time.monotonic()
            try:
                await loop()
                cause = "ended without an error (a loop must not end)"
                exc: BaseException | None = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                cause, exc = f"{type(e).__name__}: {e}", e
            if time.monotonic() - began > HEALTHY_AFTER:
                delay, state.failures_in_row = BACKOFF_FIRST, 0
            state.restarts += 1
            state.failures_in_row += 1
            state.last_error = cause
            state.last_failure = time.time()
            key = (name, cause)
            if key not in self._logged:
                self._logged.add(key)
                log.error(
                    "task %s failed: %s; restarting it in %.0f s",
                    name,
                    cause,
                    delay,
                    exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
                )
            if state.failures_in_row == FAILING_AFTER and self._on_change is not None:
                self._on_change()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
            if state.failures_in_row >= FAILING_AFTER:
                log.info("task %s restarting (failure %d in a row)", name, state.failures_in_row)

    def failing(self) -> list[str]:
        """Loops that failed FAILING_AFTER times or more in a row (and have not run a minute since)."""
        now = time.time()
        return [
            s.name
            for s in self.states.values()
            if s.failures_in_row >= FAILING_AFTER
            and s.last_failure is not None
            and now - s.last_failure < HEALTHY_AFTER + BACKOFF_CAP
        ]

    def alive(self) -> bool:
        return all(not t.done() for t in self._tasks.values())

    def payload(self) -> dict[str, Any]:
        return {
            s.name: {"restarts": s.restarts, **({"last_error": s.last_error} if s.last_error else {})}
            for s in self.states.values()
            if s.restarts
        }

    async def stop(self, names: Callable[[str], bool] = lambda _: True) -> None:
        """Cancel the tasks whose name matches and wait for them. A task still running a second after
        its cancel is cancelled again: in Python 3.11 ``asyncio.wait_for`` loses a cancel that
        arrives as its inner future completes (CPython gh-86296), and a loop that lost it would
        hold the stop for ever."""
        chosen = [(n, t) for n, t in self._tasks.items() if names(n)]
        running = {t for _, t in chosen}
        while running:
            for t in running:
                t.cancel()
            _, running = await asyncio.wait(running, timeout=CANCEL_AGAIN)
        for n, _ in chosen:
            del self._tasks[n]
