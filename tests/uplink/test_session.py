"""session.py against tests/uplink/datacenter.py: login, heartbeat, report acks per variant,
断点续传 after withheld acks, a wrong key, garbage frames and a data centre that never answers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, ParamSpec

import pytest

from collector.uplink.messages import AckForm, Common, FunctionValue, MeterRecord, PeriodConfig, Query
from collector.uplink.session import (
    Backoff,
    LoginRefused,
    Pending,
    ReplyTimeout,
    Session,
    SessionError,
    Settings,
    State,
    Status,
    run_forever,
)
from collector.uplink.variant import Variant
from tests.uplink.datacenter import DataCenter

P = ParamSpec("P")


def sync(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in its own event loop (the project has no pytest-asyncio)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


KEY = b"0000000000123456"
COMMON = Common("330100A001", "01")
T0 = datetime(2024, 5, 23, 18, 0)


def period(i: int) -> Pending:
    meters = (MeterRecord("1", (FunctionValue("1", "01A00", 100.0 + i), FunctionValue("8", "01A00", 2.5))),)
    return Pending(i, T0 + timedelta(minutes=15 * i), meters)


class Source:
    """A ReportSource over a list; acknowledged items leave it."""

    def __init__(self, items: list[Pending]) -> None:
        self.items = items
        self.acked: list[int] = []
        self.period: int | None = None

    async def pending(self, limit: int) -> Sequence[Pending]:
        return self.items[:limit]

    async def acknowledged(self, item: Pending) -> None:
        self.items.remove(item)
        self.acked.append(item.key)

    async def collect_now(self) -> tuple[MeterRecord, ...]:
        return period(99).meters

    async def period_changed(self, minutes: int) -> None:
        self.period = minutes


async def connect(dc: DataCenter, variant: Variant, key: bytes = KEY, **kw: float) -> Session:
    port = await dc.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    s = Session(reader, writer, Settings(COMMON, key, KEY, variant, reply_timeout=kw.get("timeout", 2.0)))
    s.start()
    return s


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition, with a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


VARIANTS = [
    Variant(),
    Variant(crc_span="data", crc_order="little", md5_order="key+sequence", md5_case="upper", crc_strict=True),
    Variant(aes_mode="ecb", padding="pkcs7", markers="reversed", type_style="element", encoding="gbk"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["default", "z-like", "ecb-pkcs7-reversed"])
@pytest.mark.parametrize("ack", ["continuous_ack", "data_ack", "report_ack", "record_arrive", "ack"])
@sync
async def test_login_heartbeat_and_report(variant: Variant, ack: AckForm) -> None:
    dc = DataCenter(variant, KEY, KEY, report_ack=ack)
    s = await connect(dc, variant)
    try:
        await s.login()
        assert s.status.state is State.ONLINE and dc.logins == [True]
        await s.heartbeat()
        assert s.status.clock_offset is not None
        source = Source([period(1), period(2)])
        assert await s.pump(source) == 2
        assert source.acked == [1, 2]
        rec = dc.records[0]
        assert (rec.building_id, rec.gateway_id, rec.meter, rec.function, rec.coding, rec.value) == (
            "330100A001",
            "01",
            "1",
            "1",
            "01A00",
            "101",
        )
        assert {r.operation for r in dc.records} == {"report"}
        assert not dc.problems
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_wrong_key_is_refused_with_the_reason() -> None:
    dc = DataCenter(Variant(), b"another key 1234", KEY)
    s = await connect(dc, Variant())
    try:
        with pytest.raises(LoginRefused, match=r"refused the login.*md5_order"):
            await s.login()
        assert s.status.state is State.REFUSED and dc.logins == [False]
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_md5_order_mismatch_is_refused() -> None:
    dc = DataCenter(Variant(md5_order="key+sequence"), KEY, KEY)
    s = await connect(dc, Variant(md5_order="sequence+key"))
    try:
        with pytest.raises(LoginRefused):
            await s.login()
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_withheld_acks_are_resent_as_continuous_with_total_and_current() -> None:
    dc = DataCenter(Variant(), KEY, KEY, withhold_acks=True)
    s = await connect(dc, Variant(), timeout=0.3)
    try:
        await s.login()
        source = Source([period(1), period(2), period(3)])
        assert await s.pump(source) == 0
        assert source.acked == [] and len(dc.records) == 6  # all three sent as report, none acked
        dc.withhold_acks = False
        assert await s.pump(source) == 3
        assert source.acked == [1, 2, 3]
        cont = [p.message for p in dc.packets if getattr(p.message, "operation", "") == "continuous"]
        assert [(m.total, m.current, m.sequence) for m in cont] == [(3, 1, "1"), (3, 2, "2"), (3, 3, "3")]  # type: ignore[union-attr]
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_report_ack_none_counts_a_sent_report_as_delivered() -> None:
    v = Variant(report_ack="none")
    dc = DataCenter(v, KEY, KEY, report_ack=None)
    s = await connect(dc, v, timeout=0.3)
    try:
        await s.login()
        source = Source([period(1)])
        assert await s.pump(source) == 1
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_garbage_before_replies_is_skipped() -> None:
    dc = DataCenter(Variant(), KEY, KEY, garbage=b"\x00\x68\x68\x16\x16\xff\xff\xff\x7fnoise")
    s = await connect(dc, Variant())
    try:
        await s.login()
        await s.heartbeat()
        assert await s.pump(Source([period(1)])) == 1
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_a_data_centre_that_never_answers_times_out() -> None:
    dc = DataCenter(Variant(), KEY, KEY, silent=True)
    s = await connect(dc, Variant(), timeout=0.3)
    try:
        with pytest.raises(ReplyTimeout, match=r"no login sequence within 0\.3 s"):
            await s.login()
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_wrong_aes_key_says_so_in_the_timeout() -> None:
    dc = DataCenter(Variant(), KEY, b"ffffffffffffffff")
    s = await connect(dc, Variant(), timeout=0.3)
    try:
        with pytest.raises(ReplyTimeout):
            await s.login()
        assert dc.problems  # the data centre could not read us either
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_closed_connection_is_an_error() -> None:
    dc = DataCenter(Variant(), KEY, KEY, close_after_login=True)
    s = await connect(dc, Variant())
    try:
        await s.login()
        with pytest.raises(SessionError, match="closed"):
            await s.heartbeat()
    finally:
        await s.close()
        await dc.stop()


@sync
async def test_query_and_period_from_the_data_centre() -> None:
    dc = DataCenter(Variant(), KEY, KEY)
    s = await connect(dc, Variant())
    source = Source([])
    wake = asyncio.Event()
    task = asyncio.create_task(s.run(source, wake))
    try:
        await until(lambda: s.status.state is State.ONLINE)
        await dc.push(PeriodConfig(5), COMMON)
        await dc.push(Query(), COMMON)
        await until(lambda: source.period == 5 and any(r.operation == "reply" for r in dc.records))
        assert any(type(p.message).__name__ == "PeriodAck" for p in dc.packets)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dc.stop()


@sync
async def test_run_forever_reconnects_after_the_data_centre_drops_us() -> None:
    dc = DataCenter(Variant(), KEY, KEY)
    port = await dc.start()
    settings = Settings(COMMON, KEY, KEY, Variant(), heartbeat=0.2, reply_timeout=1.0)
    source, wake, status = Source([period(1)]), asyncio.Event(), Status()
    task = asyncio.create_task(
        run_forever("127.0.0.1", port, settings, source, wake, status, Backoff(base=0.05, cap=0.1))
    )
    try:
        await until(lambda: source.acked == [1])
        dc.drop_connections()
        await until(lambda: dc.connections >= 2 and status.state is State.ONLINE)
        source.items.append(replace(period(2), resend=True))
        wake.set()
        await until(lambda: source.acked == [1, 2])
        assert dc.records[-1].operation == "continuous"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dc.stop()


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=1, cap=8)
    delays = [b.next() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1.5 and all(d <= 12 for d in delays) and delays[4] >= 4
