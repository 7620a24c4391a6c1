"""The writer: readings and events from the buses into the SQLite outbox, one transaction per batch,
with a bounded queue in front of it that outlives a full disk."""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from collector.config import Config
from collector.daemon import clock
from collector.daemon.buffer import AsyncBuffer
from collector.daemon.calibration import Reading
from collector.daemon.counters import Ledger, PointState
from collector.daemon.records import Event, Interval, Record, Row

log = logging.getLogger(__name__)

WRITE_LINGER = 0.05  #: seconds to gather readings into one transaction
QUEUE_MAX = 10_000  #: messages waiting for the buffer (a disk-full episode); then the oldest are dropped
BATCH_MAX = 5_000  #: messages in one transaction at most
WRITE_RETRY_CAP = 10.0  #: seconds between attempts to write a failing buffer, at most


Item = Record | Interval | Event  #: waiting to be stored


class Writer:
    """Gathers readings and events; checks counters; stores each batch in one transaction (readings,
    events, interval consumption and the counter state together); hands the rows to MQTT.

    The queue in front of SQLite is bounded. While the buffer cannot be written (a full disk, an I/O
    error) readings wait there and the write is retried with backoff; when the queue is full the
    oldest waiting readings are dropped, counted, and reported by a ``readings_not_stored`` event
    once storage works again. Polling never waits for the writer.
    """

    def __init__(
        self,
        buffer: AsyncBuffer,
        offer: Callable[[list[Row]], None],
        sync_check: str,
        config: Config,
        ledger: Ledger,
        *,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self.buffer = buffer
        self.offer = offer
        self.sync_check = sync_check
        self.meters = {m.id: m for m in config.meters}
        self.path = config.storage.path
        self.ledger = ledger
        self.queue_max = queue_max
        #: counter states changed since the last stored batch, dumped only when that batch is stored
        self._dirty: dict[tuple[str, str], PointState] = {}
        self.queue: collections.deque[Item] = collections.deque()
        self._wake = asyncio.Event()
        self.stored = 0
        self._synced = True
        self._synced_at = -1e9
        self.failing_since: float | None = None  #: wall clock: the first failed write of this episode
        self.last_error = ""
        self.not_stored = 0  #: readings dropped from the full queue since the daemon started
        self._lost: dict[str, Any] | None = None  #: what was dropped in this episode, not yet reported
        self._storing = 0  #: messages in the transaction under way

    @property
    def waiting(self) -> int:
        """Messages not yet stored: queued, or in the transaction under way."""
        return len(self.queue) + self._storing

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._synced_at > 10:
            self._synced, self._synced_at = clock.synchronised(self.sync_check), now
        return self._synced

    def _put(self, item: Item) -> None:
        if len(self.queue) >= self.queue_max:
            self._drop(self.queue.popleft())
        self.queue.append(item)
        self._wake.set()

    def _drop(self, item: Item) -> None:
        lost = self._lost
        if lost is None:
            lost = self._lost = {"count": 0, "meters": {}}
        lost["count"] += 1
        meter = item.meter
        if meter:
            lost["meters"][meter] = lost["meters"].get(meter, 0) + 1
        if isinstance(item, Record):
            slot = item.slot.isoformat().replace("+00:00", "Z")
            lost.setdefault("first_slot", slot)
            lost["last_slot"] = slot
            self.not_stored += 1

    def reading(self, r: Reading) -> None:
        outcome = self.ledger.process(self.meters[r.meter], r)
        self._put(Record(r.meter, r.slot, r.ts, r.values, r.quality, r.errors, self.synced()))
        for iv in outcome.intervals:
            self._put(iv)
        for e in outcome.events:
            cause = e.detail["cause"]
            log.warning(
                'meter "%s" %s: counter %s (%s)',
                e.meter,
                e.detail["point"],
                cause,
                "continuity kept" if cause != "rollover" else "modulus added",
            )
            self._put(e)
        self._dirty.update(outcome.state)

    def event(self, e: Event) -> None:
        self._put(e)

    async def run(self) -> None:
        delay = 1.0
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(WRITE_LINGER)
            try:
                await self._write()
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_CAP)
                continue
            delay = 1.0
            self._recovered()

    async def _write(self) -> None:
        """Store what is queued, up to BATCH_MAX items, in one transaction; on failure the items go
        back to the front of the queue."""
        n = min(len(self.queue), BATCH_MAX)
        # The counter state goes with the batch that takes the last queued reading, so the stored
        # state never runs ahead of the stored readings (a catch-up after a full disk is split).
        last = n == len(self.queue)
        items = [self.queue.popleft() for _ in range(n)]
        self._storing = n
        records = [i for i in items if isinstance(i, Record)]
        intervals = [i for i in items if isinstance(i, Interval)]
        events = [i for i in items if isinstance(i, Event)]
        refs, self._dirty = (self._dirty, {}) if last else ({}, self._dirty)
        dirty = {k: Ledger.dump(st) for k, st in refs.items()}  # now: the states of exactly these readings
        try:
            rows = await self.buffer.append(records, events, intervals, dirty)
        except BaseException:
            # Back to the front of the queue, in order; readings that arrived meanwhile stay behind them.
            self.queue.extendleft(reversed(items))
            while len(self.queue) > self.queue_max:
                self._drop(self.queue.popleft())
            self._dirty = {**refs, **self._dirty}
            raise
        finally:
            self._storing = 0
        self.stored += len(rows)
        self.offer(rows)

    def _failed(self, exc: BaseException, delay: float) -> None:
        reason = str(exc) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = time.time()
            free = _free_kb(self.path)
            full = "full" in reason or getattr(exc, "errno", None) == errno.ENOSPC
            what = "buffer disk full" if full else f"buffer write failed ({reason})"
            log.error(
                "%s: %d reading(s) waiting in memory (at most %d, then the oldest are dropped), %s kB free on %s; "
                "retrying every %.0f-%.0f s",
                what,
                self.waiting,
                self.queue_max,
                free if free is not None else "?",
                os.path.dirname(self.path) or ".",
                delay,
                WRITE_RETRY_CAP,
            )
        elif reason != self.last_error:
            log.error("buffer write failed again, now: %s", reason)
        self.last_error = reason

    def _recovered(self) -> None:
        if self.failing_since is not None:
            lost = self._lost["count"] if self._lost else 0
            log.warning(
                "buffer writes again after %.0f s%s",
                time.time() - self.failing_since,
                f"; {lost} message(s) were dropped while it could not" if lost else "; nothing was lost",
            )
            self.failing_since = None
            self.last_error = ""
        if self._lost is not None:
            lost, self._lost = self._lost, None
            self.queue.append(Event("readings_not_stored", None, lost))
            self._wake.set()

    async def flush(self) -> None:
        """Store what is queued (on stop); gives up after one failed attempt, logged."""
        while self.queue:
            try:
                await self._write()
            except (sqlite3.Error, OSError) as exc:
                log.error("on stop: %d message(s) could not be stored: %s", len(self.queue), exc)
                return


def _free_kb(path: str) -> int | None:
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free // 1024
    except OSError:
        return None
