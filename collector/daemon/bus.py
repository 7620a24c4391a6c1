"""Buses: one worker per physical bus, one transaction on it at a time.

A slow or dead meter costs its bus at most its timeout and then backs off (exponential, capped),
so the other meters on that bus keep their schedule. A poll that would overlap the previous poll
of the same meter is skipped and counted, never piled up. `read_once` is the one-shot read of the
`read` command, built from the same pieces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from collector.config import Bus, Config, Meter
from collector.daemon.calibration import Reading, calibrate
from collector.daemon.health import BusHealth, Health
from drivers.dlt645.device import Dlt645Reader
from drivers.errors import CannotOpen, TransportError
from drivers.modbus.planner import DEFAULT_GAP_SERIAL, DEFAULT_GAP_TCP
from drivers.modbus.reader import ModbusReader
from drivers.modbus.transport import Link
from drivers.model import Model
from drivers.reading import MeterReader
from drivers.serialline import SerialLine

log = logging.getLogger(__name__)


def link_for(bus: Bus) -> Link:
    return Link(
        kind=bus.type,
        host=bus.host,
        port=bus.port,
        serial=bus.serial,
        timeout=bus.timeout,
        retries=bus.retries,
        pause=bus.pause,
        drain=bus.drain,
        name=bus.name,
    )


def gap_for(bus: Bus) -> int:
    if bus.gap is not None:
        return bus.gap
    return DEFAULT_GAP_TCP if bus.type == "tcp" else DEFAULT_GAP_SERIAL


def make_reader(bus: Bus) -> MeterReader:
    """The reader for a bus's protocol: Modbus (TCP, RTU, RTU over TCP), DL/T 645 or CJ/T 188."""
    if bus.type in ("dlt645", "cjt188"):
        assert bus.serial is not None  # config gives every serial bus its settings
        line = SerialLine(
            bus.serial, timeout=bus.timeout, retries=bus.retries, pause=bus.pause, drain=bus.drain, name=bus.name
        )
        if bus.type == "dlt645":
            return Dlt645Reader(line)
        from drivers.cjt188.device import Cjt188Reader

        return Cjt188Reader(line)
    return ModbusReader(link_for(bus), gap_for(bus))


def wanted(meter: Meter, with_hidden: bool = False) -> list[str]:
    """The points a read asks for: the published ones, and with ``with_hidden`` the helpers and
    settings `read --raw` shows too."""
    names = list(meter.points)
    if with_hidden:
        names += [p.name for p in meter.model.points if not p.publish and p.name not in names]
    return names


async def read_meter(
    reader: MeterReader,
    meter: Meter,
    names: list[str] | None = None,
    slot: datetime | None = None,
    retries: int | None = None,
) -> Reading:
    ts = datetime.now(UTC)
    wanted = list(names if names is not None else meter.points)
    result = await reader.read_meter(meter.address, meter.model, wanted, retries=retries)
    return calibrate(meter, result, slot or ts.replace(microsecond=0), ts)


async def per_bus(
    meters: list[Meter], read_bus: Callable[[str, list[Meter]], Awaitable[list[Reading]]]
) -> list[Reading]:
    """``read_bus(bus, its meters)`` for every bus at once (one bus reads its meters one after the
    other); the readings in the order of ``meters``."""
    by_bus: dict[str, list[Meter]] = {}
    for m in meters:
        by_bus.setdefault(m.bus, []).append(m)
    results = await asyncio.gather(*(read_bus(n, ms) for n, ms in by_bus.items()))
    order = {m.id: i for i, m in enumerate(meters)}
    return sorted((r for rs in results for r in rs), key=lambda r: order[r.meter])


async def read_once(config: Config, meters: list[Meter], *, with_hidden: bool = False) -> list[Reading]:
    """Read each meter once on readers of its own (no daemon runs): buses in parallel."""

    async def one_bus(name: str, ms: list[Meter]) -> list[Reading]:
        reader = make_reader(config.buses[name])
        try:
            return [await read_meter(reader, m, wanted(m, with_hidden)) for m in ms]
        finally:
            reader.close()

    return await per_bus(meters, one_bus)


class Backoff:
    """Exponential, capped: a dead meter is tried again after 1, 2, 4 ... intervals, at most ``cap`` s."""

    def __init__(self, interval: float, cap: float) -> None:
        self.interval = interval
        self.cap = max(cap, interval)
        self.failures = 0
        self.not_before = 0.0  # monotonic

    def fail(self, now: float) -> None:
        self.failures += 1
        delay = min(self.interval * 2 ** (self.failures - 1), self.cap)
        # A poll at the next slot is always allowed after the first failure (one retry in time).
        self.not_before = now + delay - self.interval * 0.5

    def ok(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.not_before


ASKS_WAITING = 8  #: reads asked of a bus (read through the daemon, cmd/read) that may wait at once


class Busy(Exception):
    """A bus has too many asked reads waiting: ask again later."""


@dataclass(slots=True)
class _Ask:
    """A read asked of the running daemon: answered, not stored, ahead of the next queued poll."""

    meter: Meter
    with_hidden: bool
    done: asyncio.Future[Reading] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BusWorker:
    """Owns one physical bus: polls its meters one at a time, in slot order. A read asked through
    `ask` (the `read` command while the daemon runs, a platform's cmd/read) goes before the queued
    polls, so it waits at most for the transaction on the line: one master on the bus."""

    def __init__(
        self,
        bus: Bus,
        meters: list[Meter],
        sink: Callable[[Reading], None],
        health: Health,
        *,
        backoff_cap: float = 300.0,
        on_model: Callable[[Meter, Model], None] | None = None,
    ) -> None:
        self.on_model = on_model  #: told when a meter's model is discovered (SunSpec), to publish its meta
        self.announced: dict[str, Model] = {}
        self.bus = bus
        self.meters = {m.id: m for m in meters}
        self.sink = sink
        self.health = health
        self.reader = make_reader(bus)
        self.queue: deque[tuple[Meter, datetime]] = deque()
        self.asks: deque[_Ask] = deque()
        self._wake = asyncio.Event()
        self.busy: set[str] = set()
        self.backoff = {m.id: Backoff(m.interval, backoff_cap) for m in meters}
        self.started_at: float | None = None  # monotonic start of the running poll
        self.bus_health = health.buses.setdefault(bus.name, BusHealth())
        #: why the bus's port cannot be opened, and since when (monotonic); None while it is open
        self.port_down: tuple[str, float] | None = None
        self._logged: set[tuple[str, str]] = set()
        drain = bus.timeout if bus.drain is None else bus.drain
        #: longest a healthy poll can take: every request timing out, plus margin (for the watchdog)
        self.stuck_after = 30.0 + 8 * (bus.retries + 1) * (bus.timeout + drain + bus.pause)

    def enqueue(self, meter: Meter, slot: datetime) -> None:
        mh = self.health.meter(meter.id)
        if meter.id in self.busy:
            mh.skipped_overlap += 1
            return
        if not self.backoff[meter.id].allows(time.monotonic()):
            mh.skipped_backoff += 1
            return
        self.busy.add(meter.id)
        self.queue.append((meter, slot))
        self._wake.set()

    async def ask(self, meter: Meter, *, with_hidden: bool = False) -> Reading:
        """A fresh reading of ``meter``, read on this bus between polls; not given to the sink.
        Raises Busy when ASKS_WAITING reads already wait."""
        if len(self.asks) >= ASKS_WAITING:
            raise Busy(f'bus "{self.bus.name}" has {len(self.asks)} reads waiting; ask again later')
        ask = _Ask(meter, with_hidden)
        self.asks.append(ask)
        self._wake.set()
        return await asyncio.shield(ask.done)

    async def _next(self) -> _Ask | tuple[Meter, datetime]:
        while not (self.asks or self.queue):
            self._wake.clear()
            await self._wake.wait()
        return self.asks.popleft() if self.asks else self.queue.popleft()

    def stuck(self) -> bool:
        return self.started_at is not None and time.monotonic() - self.started_at > self.stuck_after

    async def run(self) -> None:
        try:
            while True:
                job = await self._next()
                if isinstance(job, _Ask):
                    await self._answer(job)
                    continue
                meter, slot = job
                self.started_at = time.monotonic()
                try:
                    await self.poll(meter, slot)
                except Exception as exc:
                    # A bug, not a meter fault: its traceback once per meter and cause, then counted.
                    cause = f"{type(exc).__name__}: {exc}"
                    self.health.meter(meter.id).failed += 1
                    if (meter.id, cause) not in self._logged:
                        self._logged.add((meter.id, cause))
                        log.exception('polling meter "%s" failed (%s); logged once, counted in health', meter.id, cause)
                finally:
                    self.bus_health.busy_s += time.monotonic() - self.started_at
                    self.started_at = None
                    self.busy.discard(meter.id)
        finally:
            for ask in self.asks:
                ask.done.cancel()
            self.reader.close()

    async def _answer(self, ask: _Ask) -> None:
        if ask.done.cancelled():
            return  # the asker went away while it waited
        self.started_at = time.monotonic()
        before = self._counts()
        try:
            reading = await read_meter(self.reader, ask.meter, wanted(ask.meter, ask.with_hidden))
        except Exception as exc:
            if not ask.done.done():
                ask.done.set_exception(exc)
        else:
            if not ask.done.done():
                ask.done.set_result(reading)
        finally:
            self._add_counts(before)
            self.bus_health.busy_s += time.monotonic() - self.started_at
            self.started_at = None

    def _counts(self) -> tuple[int, int, int]:
        return self.reader.requests, self.reader.timeouts, self.reader.garbled

    def _add_counts(self, before: tuple[int, int, int]) -> None:
        """What the reader counted since ``before`` goes into the bus's health."""
        requests, timeouts, garbled = self._counts()
        self.bus_health.transactions += requests - before[0]
        self.bus_health.timeouts += timeouts - before[1]
        self.bus_health.garbled += garbled - before[2]

    async def poll(self, meter: Meter, slot: datetime) -> None:
        backoff = self.backoff[meter.id]
        mh = self.health.meter(meter.id)
        before = self._counts()
        ts = datetime.now(UTC)
        try:
            result = await self.reader.read_meter(
                meter.address, meter.model, list(meter.points), retries=0 if backoff.failures else None
            )
        finally:
            self._add_counts(before)  # what went out on the line counts, whatever the poll's outcome
        self.note_port(result.failure)
        reading = calibrate(meter, result, slot, ts)
        mh.polls += 1
        discovered = reading.model if reading.model is not meter.model else None
        if discovered is not None and self.on_model is not None and self.announced.get(meter.id) is not discovered:
            self.announced[meter.id] = discovered
            self.on_model(meter, discovered)
        if reading.failure is not None:
            mh.failed += 1
            backoff.fail(time.monotonic())
            self.health.mark_down(meter.id, self.bus.name, reading.failure)
        else:
            if reading.quality == "good":
                mh.good += 1
            else:
                mh.partial += 1
            backoff.ok()
            self.health.mark_up(meter.id, self.bus.name)
        self.sink(reading)

    def note_port(self, failure: TransportError | None) -> None:
        """Log a port that cannot be opened once per bus and episode (not once per meter and poll),
        and once when it opens again. A link lost during a transaction is reopened at the next one;
        only when that fails does an episode begin. Meters going offline are Health's to log."""
        if isinstance(failure, CannotOpen):
            if self.port_down is None:
                log.warning('bus "%s": %s; retrying', self.bus.name, failure)
                self.port_down = (str(failure), time.monotonic())
        elif self.port_down is not None:
            down = time.monotonic() - self.port_down[1]
            log.info('bus "%s": %s open again after %.0f s', self.bus.name, self.bus.describe(), down)
            self.port_down = None
