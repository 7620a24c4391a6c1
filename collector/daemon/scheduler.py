"""Polls aligned to wall-clock slots with APScheduler 3.x, immune to clock steps.

One job per distinct interval; a 1 m job fires at :00 of every minute and enqueues each meter of
that interval on its bus's worker with the slot it belongs to.

APScheduler 3.x, after a large forward clock step, computes every missed fire time between the
job's next run time and now (issues #35, #526, #1066: minutes of blocked loop for a Pi stepping
from 1970 to today). ``AlignedTrigger`` never returns a time at or before ``now``, so at most one
missed run is seen, and ``realign()`` (called by clock.ClockWatch on a step) moves every job to the
next slot after the new time, so a backward step does not leave the poller waiting out the step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from collector.config import Meter

log = logging.getLogger(__name__)
# APScheduler logs every run at INFO; missed runs (WARNING) are what an operator needs to see.
logging.getLogger("apscheduler").setLevel(logging.WARNING)


def slot_of(ts: float, interval: float) -> float:
    return math.floor(ts / interval + 1e-9) * interval


class AlignedTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires at every multiple of ``interval`` seconds since the Unix epoch (UTC), always after now."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        t = slot_of(now.timestamp(), self.interval) + self.interval
        if previous_fire_time is not None and t <= previous_fire_time.timestamp():
            t = previous_fire_time.timestamp() + self.interval
        return datetime.fromtimestamp(t, UTC)

    def __str__(self) -> str:
        return f"aligned[{self.interval:g}s]"


class Poller:
    def __init__(
        self,
        meters: list[Meter],
        enqueue: Callable[[Meter, datetime], None],
        on_missed: Callable[[], None] | None = None,
    ) -> None:
        self.groups: dict[float, list[Meter]] = {}
        for m in meters:
            self.groups.setdefault(m.interval, []).append(m)
        self.enqueue = enqueue
        self.on_missed = on_missed
        self.fired = 0
        self.scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1})

    def start(self) -> None:
        for interval in sorted(self.groups):
            self.scheduler.add_job(
                self._fire,
                AlignedTrigger(interval),
                args=[interval],
                id=f"poll-{interval:g}s",
                misfire_grace_time=max(1, int(min(interval / 2, 30))),
            )
        self.scheduler.add_listener(self._missed, EVENT_JOB_MISSED)
        self.scheduler.start()

    def _missed(self, event: JobExecutionEvent) -> None:
        if self.on_missed is not None:
            self.on_missed()

    async def _fire(self, interval: float) -> None:
        self.fired += 1
        now = datetime.now(UTC).timestamp()
        slot = datetime.fromtimestamp(slot_of(now, interval), UTC)
        for meter in self.groups[interval]:
            self.enqueue(meter, slot)

    def realign(self) -> None:
        """Move every job to its next slot after the current wall-clock time."""
        now = datetime.now(UTC)
        for job in self.scheduler.get_jobs():
            job.modify(next_run_time=job.trigger.get_next_fire_time(None, now))
        self.scheduler.wakeup()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def next_runs(self) -> dict[str, Any]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}
