"""The delivery window alone: a real SQLite buffer, and a recording link in the session's place (the
window's own interface, ``delivery.Link``: send a topic and payload, get a message id, hear of its
ack through ``on_ack``). No broker: the test decides what is acknowledged and what is refused."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.daemon.buffer import AsyncBuffer, Buffer
from collector.daemon.delivery import FRESH_SHARE, REJECT_RETRY, DeliveryWindow
from collector.daemon.payloads import Topics
from collector.daemon.records import Record, Row
from tests.conftest import wait_until_async

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


class Recorder:
    """Stands in for the MQTT session: keeps what was sent, and acks what the test says."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[int, str]] = []  #: (seq, meter) in the order sent
        self.unacked: dict[int, int] = {}  #: mid -> seq
        self.peak = 0  #: the most messages unacknowledged at once
        self._mid = 0

    def send(self, topic: str, payload: bytes) -> int:
        body = json.loads(payload)
        self._mid += 1
        self.sent.append((body["seq"], body.get("meter", body.get("event"))))
        self.unacked[self._mid] = body["seq"]
        self.peak = max(self.peak, len(self.unacked))
        return self._mid

    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.sent]

    def ack(self, window: DeliveryWindow, only: Collection[int] | None = None, refuse: Collection[int] = ()) -> None:
        """PUBACK every unacknowledged message (or those of the seqs in ``only``); ``refuse``: with
        reason code 135, as Mosquitto answers an ACL-denied publish under MQTT 5."""
        for mid, seq in list(self.unacked.items()):
            if only is None or seq in only:
                del self.unacked[mid]
                window.on_ack(mid, seq in refuse, "Not authorized" if seq in refuse else "Success")

    def reconnect(self, window: DeliveryWindow) -> None:
        """The link drops and comes back (paho keeps its in-flight messages and their mids)."""
        self.connected = False
        window.on_disconnected()
        self.connected = True
        window.on_connected()


def rec(meter: str, i: int) -> Record:
    return Record(meter, T0 + timedelta(seconds=i), T0 + timedelta(seconds=i), {"x": float(i)})


def stored(tmp_path: Path, n: int) -> tuple[Buffer, AsyncBuffer]:
    """A buffer holding seqs 1..n of meter "old"."""
    b = Buffer(tmp_path / "buf.db")
    if n:
        b.append([rec("old", i) for i in range(n)])
    return b, AsyncBuffer(b)


async def until_depth(buf: AsyncBuffer, depth: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (now := await buf.depth()) != depth:
        if loop.time() > deadline:
            raise AssertionError(f"{now} rows stored after {timeout:g} s, not {depth}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    buf: AsyncBuffer, size: int, *, flush: bool = False, reject_retry: float = REJECT_RETRY
) -> AsyncIterator[tuple[DeliveryWindow, Recorder]]:
    """The window's pump (and with ``flush`` its ack flush and retry loop) over a recording link."""
    link = Recorder()
    window = DeliveryWindow(buf, link, "gw", Topics("meters", "gw"), size=size, reject_retry=reject_retry)
    loops = window.loops()
    tasks = [asyncio.create_task(loops["mqtt-pump"]())]
    if flush:
        tasks.append(asyncio.create_task(loops["mqtt-acks"]()))
    window.on_connected()
    try:
        yield window, link
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await buf.close()


async def ack_all(window: DeliveryWindow, link: Recorder, total: int) -> None:
    """Acknowledge whatever is in flight until ``total`` messages have been sent and acknowledged,
    and the window has taken every ack."""
    while len(link.sent) < total or link.unacked:
        await wait_until_async(lambda: link.unacked, 10, "a message in flight")
        link.ack(window)
        await wait_until_async(lambda: window.inflight == len(link.unacked), 10, "the window to take the acks")


def test_the_backlog_goes_oldest_first_with_one_place_in_four_for_fresh_rows(tmp_path: Path) -> None:
    async def go() -> None:
        _, buf = stored(tmp_path, 60)
        async with running(buf, 8) as (window, link):
            await wait_until_async(lambda: len(link.sent) == 8, 10, "a full window")
            window.offer(await buf.append([rec("fresh", 100 + i) for i in range(10)]))
            await ack_all(window, link, 70)
        old = [seq for seq, meter in link.sent if meter == "old"]
        fresh = [i for i, (_, meter) in enumerate(link.sent) if meter == "fresh"]
        assert old == list(range(1, 61))
        assert [link.sent[i][0] for i in fresh] == list(range(61, 71))
        # Interleaved while the backlog drains, one in FRESH_SHARE, not after it.
        assert fresh[0] < 8 + FRESH_SHARE
        assert all(b - a == FRESH_SHARE for a, b in itertools.pairwise(fresh))
        assert link.peak == 8 and window.stats.published == 70 and window.stats.acked == 70

    asyncio.run(go())


def test_acknowledged_rows_are_deleted_at_the_flush_and_never_sent_again(tmp_path: Path) -> None:
    async def go() -> None:
        _, buf = stored(tmp_path, 30)
        async with running(buf, 10) as (window, link):
            await ack_all(window, link, 30)
            assert await buf.depth() == 30  # deleted by the flush, not by the ack
            link.reconnect(window)  # acknowledged, not yet deleted: skipped all the same
            await window.drain(10)
            assert await buf.depth() == 0
            link.reconnect(window)
            await window.drain(10)
            assert link.seqs() == list(range(1, 31))

    asyncio.run(go())


def test_a_refused_row_stays_and_is_sent_again_after_a_delay_that_doubles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    retry = 0.4

    async def go() -> None:
        _, buf = stored(tmp_path, 3)
        async with running(buf, 10, flush=True, reject_retry=retry) as (window, link):
            loop = asyncio.get_running_loop()
            await wait_until_async(lambda: len(link.sent) == 3, 10, "three rows sent")
            refused = loop.time()
            link.ack(window, refuse={2})
            await until_depth(buf, 1)  # 1 and 3 deleted, 2 kept
            await wait_until_async(lambda: link.seqs().count(2) == 2, 10, "seq 2 sent again")
            assert loop.time() - refused >= retry
            refused = loop.time()
            link.ack(window, refuse={2})
            await wait_until_async(lambda: link.seqs().count(2) == 3, 10, "seq 2 sent a third time")
            assert loop.time() - refused >= 2 * retry
            link.ack(window)
            await until_depth(buf, 0)
        assert link.seqs() == [1, 2, 3, 2, 2]
        assert (window.stats.acked, window.stats.rejected) == (3, 2)

    with caplog.at_level(logging.ERROR, logger="collector.daemon.delivery"):
        asyncio.run(go())
    said = [r.getMessage() for r in caplog.records if "broker refused seq" in r.getMessage()]
    assert len(said) == 1 and "seq 2: Not authorized" in said[0]  # once per reason, not per refusal


def test_a_reconnect_sends_again_what_is_not_in_flight_and_skips_what_is(tmp_path: Path) -> None:
    async def go() -> None:
        _, buf = stored(tmp_path, 6)
        async with running(buf, 10) as (window, link):
            await wait_until_async(lambda: len(link.sent) == 6, 10, "six rows sent")
            link.ack(window, only={1, 2, 3}, refuse={3})
            await wait_until_async(lambda: window.inflight == 3, 10, "the acks taken")
            # paho resends 4, 5 and 6 itself after the reconnect; 3 was refused: the window resends it.
            link.reconnect(window)
            await wait_until_async(lambda: len(link.sent) >= 7, 10, "a row sent after the reconnect")
            await ack_all(window, link, len(link.sent))
        assert link.seqs() == [1, 2, 3, 4, 5, 6, 3]

    asyncio.run(go())


def test_a_delete_that_fails_is_tried_again_and_its_rows_are_not_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        raw, buf = stored(tmp_path, 5)
        async with running(buf, 10) as (window, link):
            await ack_all(window, link, 5)
            raw.conn.execute("PRAGMA query_only=1")  # every write fails, as on a full disk
            await window.flush_acks()
            await window.flush_acks()
            link.reconnect(window)
            await window.drain(10)  # its flush fails a third time
            assert await buf.depth() == 5
            assert link.seqs() == [1, 2, 3, 4, 5]
            raw.conn.execute("PRAGMA query_only=0")
            await window.flush_acks()
            assert await buf.depth() == 0

    with caplog.at_level(logging.WARNING, logger="collector.daemon.delivery"):
        asyncio.run(go())
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot delete 5 acknowledged row(s)" in m for m in said) == 1, said  # once per episode
    assert said[-1] == "acknowledged rows are deleted from the buffer again"


def test_retention_drops_nothing_on_its_way_and_nothing_it_dropped_is_sent(tmp_path: Path) -> None:
    """A retention pass while the window drains: what is in flight stays, what was acknowledged
    leaves as delivered, and the rows read ahead that retention dropped are not sent after it."""

    async def go() -> None:
        raw = Buffer(tmp_path / "buf.db", max_age=3600)  # every row of rec() is days old
        raw.append([rec("old", i) for i in range(100)])
        buf = AsyncBuffer(raw)
        async with running(buf, 10) as (window, link):
            await wait_until_async(lambda: len(link.sent) == 10, 10, "a full window")
            link.ack(window, only=set(range(1, 6)))
            await wait_until_async(lambda: len(link.sent) == 15, 10, "the window refilled")
            rows = await window.around_retention(buf.enforce_retention)
            assert len(rows) == 1 and rows[0].extra is not None
            assert rows[0].extra["ranges"] == [[16, 100]]
            window.offer(rows)
            await ack_all(window, link, 16)
            await window.drain(10)
            assert await buf.depth() == 0
        assert link.seqs() == [*range(1, 16), 101]

    asyncio.run(go())


def test_a_retention_pass_cancelled_by_a_stop_sends_nothing_it_dropped(tmp_path: Path) -> None:
    """The stop cancels the pass while it still runs in the buffer's thread: what the window had read
    ahead is read again after it, so nothing the report names goes out."""

    async def go() -> None:
        raw = Buffer(tmp_path / "buf.db", max_age=3600)
        raw.append([rec("old", i) for i in range(100)])
        buf = AsyncBuffer(raw)
        done: list[list[Row]] = []

        def slow_pass(keep: set[int]) -> None:
            time.sleep(0.3)  # a long vacuum on an SD card
            done.append(raw.enforce_retention(keep=keep))

        async def enforce(keep: set[int]) -> list[Row]:
            await buf._call(slow_pass, keep)
            return done[-1]

        async with running(buf, 10) as (window, link):
            await wait_until_async(lambda: len(link.sent) == 10, 10, "a full window")
            task = asyncio.create_task(window.around_retention(enforce))
            await wait_until_async(lambda: window._gate.locked(), 10, "the pass under way")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await wait_until_async(lambda: bool(done), 10, "the pass to end in its thread")
            report = done[0][0]
            assert report.extra is not None
            await ack_all(window, link, 11)
        named = {s for a, b in report.extra["ranges"] for s in range(a, b + 1)}
        assert named == set(range(11, 101))
        assert link.seqs() == [*range(1, 11), report.seq]

    asyncio.run(go())


def test_an_ack_flush_cancelled_by_a_stop_keeps_its_rows_for_the_stops_own_flush(tmp_path: Path) -> None:
    async def go() -> None:
        _, buf = stored(tmp_path, 10)
        async with running(buf, 10) as (window, link):
            await ack_all(window, link, 10)
            blocker = asyncio.ensure_future(buf._call(time.sleep, 0.3))  # a writer's append ahead of it
            flush = asyncio.create_task(window.flush_acks())
            await asyncio.sleep(0)
            flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flush
            await blocker
            await window.settle()  # what the stop does after cancelling the loops
            assert await buf.depth() == 0

    asyncio.run(go())
