"""The delivery window: which buffered rows are on their way to the broker, and which are done.

It knows no MQTT library: it hands a topic and payload to a ``Link`` (the MQTT session in
``publisher.py``), gets a message id back, and hears of that id's acknowledgement through
``on_ack``. Facts it is built on (docs/design-changes.md, "paho-mqtt"): a publish the broker
refuses (an ACL-denied publish under MQTT 5 gets PUBACK 135) is not delivered, so only an ack
without a failure reason code deletes a row, and a refused row stays; paho queues without bound
while disconnected, so the backlog stays in SQLite and the session only ever holds ``size``
messages.

Flow: rows come either fresh (just committed by the writer, handed over in memory) or from the
backlog (read back from SQLite by seq after a (re)connect). The window is filled mostly from the
backlog, oldest first, with one place in FRESH_SHARE reserved for fresh rows so a long backlog
never starves current readings. An acked row is done for MQTT in the next batch (deleted, unless
the data centre still needs it: buffer.py, the ``pending`` mask); the backlog reads only the rows
MQTT still needs; an unacked row
stays and is sent again after a reconnect (paho resends its own in-flight QoS 1 messages; those
are skipped). A refused row is sent again after REJECT_RETRY, doubling to REJECT_RETRY_CAP while
the broker keeps refusing, so an ACL put right on the broker is seen without a reconnect.

The buffer is read only through ``AsyncBuffer``'s async methods, awaited in the event loop: after
a rewind the end of the backlog is unknown until the pump has asked ``last_seq()``, never read
from another thread.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from collector.daemon import payloads
from collector.daemon.buffer import MQTT, AsyncBuffer
from collector.daemon.records import Row

log = logging.getLogger(__name__)

FRESH_SHARE = 4  #: one in this many window places goes to fresh rows while a backlog drains
BACKLOG_CHUNK = 1000
FRESH_MAX = 10_000  #: fresh rows held in memory; beyond, the backlog reads them from SQLite instead
ACK_FLUSH_SECONDS = 0.25
REJECT_RETRY = 15.0  #: seconds before rows the broker refused are sent again (doubling to 10 min while refused)
REJECT_RETRY_CAP = 600.0

Loops = dict[str, Callable[[], Coroutine[Any, Any, None]]]  #: what runs for as long as a part does, by task name


class Link(Protocol):
    """What the window needs of an MQTT session."""

    @property
    def connected(self) -> bool: ...

    def send(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the message id that ``on_ack`` will report."""
        ...


@dataclass
class DeliveryStats:
    published: int = 0
    acked: int = 0
    rejected: int = 0


class Feed:
    """The rows to send next, in order: the backlog oldest first, read from the buffer in chunks, and
    in one turn of FRESH_SHARE a fresh row, if there is one."""

    def __init__(self, buffer: AsyncBuffer, skip: Callable[[int], bool]) -> None:
        self._buffer = buffer
        self._skip = skip  #: seqs not to send (in flight, acknowledged, refused)
        self._backlog: collections.deque[Row] = collections.deque()
        self._fresh: collections.deque[Row] = collections.deque()
        self._cursor = 0  #: the last seq read from the buffer
        self._end = 0  #: the newest seq the backlog covers; fresh rows are those above
        self._end_known = True  #: False after a rewind until the buffer's last seq has been read
        self._turn = 0

    def offer(self, rows: list[Row]) -> None:
        if len(self._fresh) + len(rows) > FRESH_MAX:
            self._fresh.clear()
            self._end = rows[-1].seq  # the backlog reads them from SQLite instead
        else:
            self._fresh.extend(rows)

    def clear_fresh(self) -> None:
        self._fresh.clear()

    def forget(self, ranges: list[list[int]]) -> None:
        """Rows retention deleted (sorted, merged seq ranges) are not sent from what was read ahead."""
        starts = [a for a, _ in ranges]

        def kept(row: Row) -> bool:
            i = bisect.bisect_right(starts, row.seq) - 1
            return i < 0 or row.seq > ranges[i][1]

        self._backlog = collections.deque(filter(kept, self._backlog))
        self._fresh = collections.deque(filter(kept, self._fresh))

    def rewind(self) -> None:
        """Read the buffer again from its oldest row."""
        self._cursor = 0
        self._backlog.clear()
        self._fresh.clear()
        self._end_known = False

    @property
    def exhausted(self) -> bool:
        return not self._fresh and self._end_known and self._cursor >= self._end

    async def next(self) -> Row | None:
        if not self._end_known:
            # Known only once read: a drain() meanwhile must not take the backlog for empty.
            self._end = max(self._end, await self._buffer.last_seq())
            self._end_known = True
        self._turn += 1
        row = self._next_fresh() if self._turn % FRESH_SHARE == 0 else None
        if row is None:
            row = await self._next_backlog()
        if row is None:
            row = self._next_fresh()
        return row

    async def _next_backlog(self) -> Row | None:
        while True:
            while self._backlog:
                row = self._backlog.popleft()
                if row.seq > self._end:
                    self._backlog.clear()
                    return None
                if not self._skip(row.seq):
                    return row
            if self._cursor >= self._end:
                return None
            rows = await self._buffer.fetch(self._cursor, BACKLOG_CHUNK, MQTT)
            if not rows:
                self._cursor = self._end
                return None
            self._cursor = rows[-1].seq
            self._backlog.extend(rows)

    def _next_fresh(self) -> Row | None:
        while self._fresh:
            row = self._fresh.popleft()
            if row.seq > self._end and not self._skip(row.seq):
                return row
        return None


class AckedRows:
    """Rows the broker acknowledged, deleted from the buffer in batches. A delete that fails (a full
    disk) is tried again with the next flush: the rows stay marked as acknowledged, so they are
    neither lost nor sent again."""

    def __init__(self, buffer: AsyncBuffer) -> None:
        self._buffer = buffer
        self._pending: list[int] = []  #: acked, delete not yet committed
        self.seqs: set[int] = set()  #: acked and not yet deleted (read by the window's skip check)
        self._failed = ""  #: why the last delete failed, "" once one succeeds

    def add(self, seq: int) -> None:
        self._pending.append(seq)
        self.seqs.add(seq)

    async def flush(self) -> None:
        if not self._pending:
            return
        seqs, self._pending = self._pending, []
        try:
            await self._buffer.delete(seqs)
        except (sqlite3.Error, OSError) as exc:
            self._pending = seqs + self._pending
            self._report(len(seqs), str(exc))
            return
        except BaseException:
            self._pending = seqs + self._pending  # cancelled (a stop): the stop's own flush deletes them
            raise
        if self._failed:
            log.warning("acknowledged rows are deleted from the buffer again")
            self._failed = ""
        self.seqs.difference_update(seqs)

    def _report(self, count: int, error: str) -> None:
        """Logged once per episode, not at every flush (four times a second)."""
        if error != self._failed:
            self._failed = error
            log.error(
                "cannot delete %d acknowledged row(s) from the buffer: %s; trying again (they are not sent again)",
                count,
                error,
            )


class Refusals:
    """Rows the broker refused (an ACL): kept, and sent again after a delay that doubles while the
    broker keeps refusing. Each reason is logged once."""

    def __init__(self, first_retry: float) -> None:
        self._first_retry = first_retry
        self.seqs: set[int] = set()  #: refused since the last rewind (read by the window's skip check)
        self._logged: set[str] = set()
        self._since = 0.0  #: monotonic time of the first refusal since the last rewind, 0 if none
        self.delay = first_retry

    def add(self, seq: int, reason: str) -> None:
        self.seqs.add(seq)
        if not self._since:
            self._since = time.monotonic()
        if reason not in self._logged:
            self._logged.add(reason)
            log.error(
                "MQTT broker refused seq %d: %s (the row stays in the buffer and is sent again "
                "after %.0f s, then less often; check the broker's ACL for this gateway)",
                seq,
                reason,
                self.delay,
            )

    def due(self) -> bool:
        return bool(self._since) and time.monotonic() - self._since > self.delay

    def back_off(self) -> None:
        self.delay = min(self.delay * 2, REJECT_RETRY_CAP)

    def reset_delay(self) -> None:
        """A new session: whatever the broker refused may be allowed now."""
        self.delay = self._first_retry

    def clear(self) -> None:
        self._since = 0.0
        self.seqs.clear()


class DeliveryWindow:
    """At most ``size`` rows in flight on the link; acks delete them, refusals keep them."""

    def __init__(
        self,
        buffer: AsyncBuffer,
        link: Link,
        gateway: str,
        topics: payloads.Topics,
        *,
        size: int = 100,
        reject_retry: float = REJECT_RETRY,
    ) -> None:
        self.link = link
        self.gateway = gateway
        self.topics = topics
        self.size = size  #: QoS 1 messages in flight at most: the configured window ...
        self.limit = size  #: ... or fewer, when the broker takes fewer at once (Receive Maximum)
        self._said_limit: int | None = None
        self.stats = DeliveryStats()
        self._wake = asyncio.Event()
        self._acks: collections.deque[tuple[int, bool, str]] = collections.deque()  #: (mid, failed, reason)
        self._inflight: dict[int, int] = {}  #: mid -> seq
        self._inflight_seqs: set[int] = set()
        self._acked = AckedRows(buffer)
        self._refused = Refusals(reject_retry)
        self._feed = Feed(buffer, self._skip)
        self._gate = asyncio.Lock()  #: held by the pump while it sends, and by retention while it drops

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def loops(self) -> Loops:
        """What runs for as long as the window does, by task name."""
        return {"mqtt-pump": self.pump, "mqtt-acks": self.flush_loop}

    # -- the session's side ---------------------------------------------------------------------

    def on_connected(self) -> None:
        self._refused.reset_delay()
        self.rewind()

    def on_disconnected(self) -> None:
        self._feed.clear_fresh()  # read back from the buffer after the next connect

    def on_ack(self, mid: int, failed: bool, reason: str) -> None:
        """Queued for the pump: paho calls this in the middle of reading its socket."""
        self._acks.append((mid, failed, reason))
        self._wake.set()

    # -- the writer's side ----------------------------------------------------------------------

    def offer(self, rows: list[Row]) -> None:
        """Rows just committed by the writer."""
        if not rows or not self.link.connected:
            return  # while disconnected: read back from the buffer after the next connect
        self._feed.offer(rows)
        self._wake.set()

    # -- the loops ------------------------------------------------------------------------------

    def rewind(self) -> None:
        """Send everything stored again from the oldest row (after a connect, or to retry refusals)."""
        self._refused.clear()
        self._feed.rewind()
        self._wake.set()

    async def pump(self) -> None:
        """Fill the window whenever something changed: an ack, fresh rows, a (re)connect."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.take_acks()
            async with self._gate:
                await self._fill()

    def peer_limit(self, receive_maximum: int | None) -> None:
        """The broker's Receive Maximum (MQTT 5 CONNACK): more unacknowledged messages than it says
        is a protocol error it may disconnect for, so the window never exceeds it."""
        self.limit = min(self.size, receive_maximum) if receive_maximum else self.size
        if self.limit < self.size and self._said_limit != self.limit:
            self._said_limit = self.limit
            log.info(
                "MQTT broker takes at most %d unacknowledged messages (Receive Maximum): %d in flight, not %d",
                self.limit,
                self.limit,
                self.size,
            )

    async def _fill(self) -> None:
        while self.link.connected and len(self._inflight) < self.limit:
            row = await self._feed.next()
            if row is None:
                return
            self.take_acks()
            if not self.link.connected:
                return  # lost while the buffer was read: the row is read again after the reconnect
            self._send(row)

    def _send(self, row: Row) -> None:
        topic, payload = payloads.message(row, self.gateway, self.topics)
        mid = self.link.send(topic, payload)
        self._inflight[mid] = row.seq
        self._inflight_seqs.add(row.seq)
        self.stats.published += 1

    def _skip(self, seq: int) -> bool:
        return seq in self._inflight_seqs or seq in self._acked.seqs or seq in self._refused.seqs

    def take_acks(self) -> None:
        while self._acks:
            mid, failed, reason = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # status, meta, health
            self._inflight_seqs.discard(seq)
            if failed:
                self.stats.rejected += 1
                self._refused.add(seq, reason)
            else:
                self.stats.acked += 1
                self._acked.add(seq)

    async def around_retention(self, enforce: Callable[[set[int]], Awaitable[list[Row]]]) -> list[Row]:
        """Run a retention pass (``enforce``, given the seqs not to drop) without a race with the
        pump: nothing is sent while it runs, what is in flight or acknowledged is kept, and the
        rows it dropped are forgotten from what was read ahead, so no seq the platform receives
        is also named as dropped."""
        async with self._gate:
            self.take_acks()
            await self._acked.flush()  # what was acknowledged leaves as delivered, not as dropped
            try:
                rows = await enforce(self._inflight_seqs | self._acked.seqs)
            except BaseException:
                # Failed or cancelled (a stop) while the pass may still run in the buffer's thread:
                # what was read ahead is read again, after it (the thread runs one job at a time).
                self._feed.rewind()
                self._wake.set()
                raise
            for row in rows:
                if row.extra is not None and "ranges" in row.extra:
                    self._feed.forget(row.extra["ranges"])
        return rows

    async def flush_loop(self) -> None:
        """Delete what was acknowledged; send refused rows again when their delay is over."""
        while True:
            await asyncio.sleep(ACK_FLUSH_SECONDS)
            await self.flush_acks()
            if self._refused.due() and self.link.connected:
                self._refused.back_off()
                self.rewind()

    async def flush_acks(self) -> None:
        await self._acked.flush()

    async def settle(self) -> None:
        """Count the acks that came in and delete their rows (on stop: no pump runs any more)."""
        self.take_acks()
        await self.flush_acks()

    async def drain(self, timeout: float) -> None:
        """Give in-flight and buffered rows up to ``timeout`` seconds to be acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.link.connected:
            self._wake.set()
            if not self._inflight and self._feed.exhausted:
                break
            await asyncio.sleep(0.05)
        await self.settle()
