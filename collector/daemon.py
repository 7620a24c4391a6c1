"""`meter-collector run`: the daemon. One asyncio loop; the buffer decouples buses from MQTT.

    Poller (APScheduler) -> BusWorker per bus -> Writer (one SQLite transaction per batch)
                                                   -> Publisher (MQTT, QoS 1, acks delete rows)

A bus never waits on MQTT, MQTT never waits on a bus. SIGTERM stops polling, stores what was read,
gives MQTT a bounded time to deliver, publishes "offline" and exits. SIGHUP re-reads the config:
an invalid one is logged and ignored; a valid one restarts the pipeline in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from collector import clock, payloads, systemd
from collector.buffer import AsyncBuffer, Record, Row
from collector.bus import BusWorker
from collector.calibration import Reading
from collector.config import Config, load_config
from collector.counters import Ledger
from collector.health import Health
from collector.publisher import Publisher, SecretError, read_password
from collector.scheduler import Poller
from drivers.source import ProblemsError

log = logging.getLogger("collector.daemon")

WRITE_LINGER = 0.05  #: seconds to gather readings into one transaction
RETENTION_PERIOD = 60.0
DRAIN_ON_STOP = 3.0  #: seconds MQTT gets to deliver on SIGTERM
STOP_POLLS = 5.0  #: seconds running polls get to finish on SIGTERM


class Interval(dict[str, Any]):
    """An interval-consumption record waiting in the writer's queue."""


class Writer:
    """Gathers readings and events; checks counters; stores each batch in one transaction (readings,
    events, interval consumption and the counter state together); hands the rows to MQTT."""

    def __init__(self, buffer: AsyncBuffer, offer: Any, sync_check: str, config: Config, ledger: Ledger) -> None:
        self.buffer = buffer
        self.offer = offer
        self.sync_check = sync_check
        self.meters = {m.id: m for m in config.meters}
        self.ledger = ledger
        self._dirty: dict[tuple[str, str], dict[str, Any]] = {}
        self.queue: asyncio.Queue[Record | dict[str, Any]] = asyncio.Queue()
        self.stored = 0
        self._synced = True
        self._synced_at = -1e9

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._synced_at > 10:
            self._synced, self._synced_at = clock.synchronised(self.sync_check), now
        return self._synced

    def reading(self, r: Reading) -> None:
        outcome = self.ledger.process(self.meters[r.meter], r)
        self.queue.put_nowait(Record(r.meter, r.slot, r.ts, r.values, r.quality, r.errors, self.synced()))
        for iv in outcome.intervals:
            self.queue.put_nowait(Interval(iv))
        for e in outcome.events:
            log.warning(
                'meter "%s" %s: counter %s (%s)',
                e["meter"],
                e["point"],
                e["cause"],
                "continuity kept" if e["cause"] != "rollover" else "modulus added",
            )
            self.queue.put_nowait(e)
        self._dirty.update({k: Ledger.dump(st) for k, st in outcome.state.items()})

    def event(self, e: dict[str, Any]) -> None:
        self.queue.put_nowait(e)

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            await asyncio.sleep(WRITE_LINGER)
            await self._write([first])

    async def _write(self, items: list[Record | dict[str, Any]]) -> None:
        # Everything queued goes in this transaction, so the counter state stored with it matches.
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        records = [i for i in items if isinstance(i, Record)]
        intervals = [dict(i) for i in items if isinstance(i, Interval)]
        events = [i for i in items if isinstance(i, dict) and not isinstance(i, Interval)]
        dirty, self._dirty = self._dirty, {}
        rows: list[Row] = await self.buffer.call(self.buffer.buffer.append, records, events, intervals, dirty)
        self.stored += len(rows)
        self.offer(rows)

    async def flush(self) -> None:
        while not self.queue.empty():
            await self._write([])


class Daemon:
    def __init__(self, config: Config) -> None:
        assert config.mqtt is not None
        self.config = config
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.workers: dict[str, BusWorker] = {}
        self.buffer: AsyncBuffer | None = None
        self.publisher: Publisher | None = None
        self.writer: Writer | None = None
        self.poller: Poller | None = None
        self.health: Health | None = None
        self.discovered: dict[str, Any] = {}  #: meter id -> model found by discovery (SunSpec)

    async def start(self) -> None:
        cfg = self.config
        assert cfg.mqtt is not None
        self.buffer = await AsyncBuffer.open(
            cfg.storage.path, max_age=cfg.storage.max_age, max_size=cfg.storage.max_size
        )
        topics = payloads.Topics(cfg.mqtt.topic_prefix, cfg.gateway.id)
        self.publisher = Publisher(
            cfg.mqtt, cfg.gateway.id, self.buffer, topics, window=cfg.mqtt.max_inflight, on_connect=self._publish_meta
        )
        self.topics = topics
        ledger = Ledger.load(await self.buffer.call(self.buffer.buffer.ledger), cfg.consumption_interval)
        self.writer = Writer(self.buffer, self.publisher.offer, cfg.clock.sync_check, cfg, ledger)
        self.health = Health(emit=self.writer.event)
        for name, bus in cfg.buses.items():
            meters = [m for m in cfg.meters if m.bus == name]
            if meters:
                self.workers[name] = BusWorker(
                    bus, meters, self.writer.reading, self.health, on_model=self._publish_discovered
                )
        self.poller = Poller(list(cfg.meters), self._enqueue, on_missed=self._missed)
        await self.publisher.start()
        self.tasks = [
            asyncio.create_task(self.writer.run(), name="writer"),
            asyncio.create_task(self._retention(), name="retention"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(clock.ClockWatch(self._clock_step, cfg.clock.step_threshold).run(), name="clock"),
        ]
        self.tasks += [asyncio.create_task(w.run(), name=f"bus-{n}") for n, w in self.workers.items()]
        self.poller.start()
        if not clock.synchronised(cfg.clock.sync_check):
            log.warning(
                'the wall clock is not synchronised (no NTP yet?): readings are marked "clock": "unsynced" until it is'
            )
        buses = ", ".join(f"{n} ({len(w.meters)} meters)" for n, w in self.workers.items())
        log.info(
            "meter-collector running: %d meters on %s; buffer %s; broker %s",
            len(cfg.meters),
            buses or "no bus",
            cfg.storage.path,
            cfg.mqtt.url,
        )

    def _enqueue(self, meter: Any, slot: datetime) -> None:
        self.workers[meter.bus].enqueue(meter, slot)

    def _missed(self) -> None:
        assert self.health is not None
        self.health.missed_slots += 1

    def _publish_meta(self) -> None:
        assert self.publisher is not None
        for m in self.config.meters:
            meta = payloads.meta(self.config, m, self.discovered.get(m.id))
            self.publisher.publish_direct(self.topics.meta(m.id), meta, qos=1, retain=True)

    def _publish_discovered(self, meter: Any, model: Any) -> None:
        assert self.publisher is not None
        self.discovered[meter.id] = model
        self.publisher.publish_direct(
            self.topics.meta(meter.id), payloads.meta(self.config, meter, model), qos=1, retain=True
        )

    def _clock_step(self, delta: float, before: float, after: float) -> None:
        assert self.health is not None and self.poller is not None and self.writer is not None
        self.health.clock_steps += 1
        self.poller.realign()
        word = "forward" if delta > 0 else "back"
        log.warning(
            "wall clock stepped %s by %.1f s; polling realigned to the new time%s",
            word,
            abs(delta),
            "; slots in between were not polled" if delta > 0 else "",
        )
        self.writer.event(
            {
                "event": "clock_stepped",
                "delta_s": round(delta, 3),
                "from": datetime.fromtimestamp(before, UTC).isoformat().replace("+00:00", "Z"),
                "to": datetime.fromtimestamp(after, UTC).isoformat().replace("+00:00", "Z"),
                "slots_skipped": delta > 0,
            }
        )

    async def _retention(self) -> None:
        assert self.buffer is not None and self.publisher is not None
        while True:
            rows = await self.buffer.call(self.buffer.buffer.enforce_retention)
            for row in rows:
                log.warning(
                    "buffer retention dropped %s unsent messages (%s)",
                    row.extra and row.extra["count"],
                    row.extra and row.extra["reason"],
                )
            self.publisher.offer(rows)
            await asyncio.sleep(RETENTION_PERIOD)

    async def health_payload(self) -> dict[str, Any]:
        assert self.buffer is not None and self.publisher is not None and self.health is not None
        stats = await self.buffer.call(self.buffer.buffer.stats)
        pub = {
            **asdict(self.publisher.stats),
            "connected": self.publisher.connected,
            "inflight": self.publisher.inflight,
        }
        body = self.health.payload(stats, pub)
        return {
            "v": payloads.PAYLOAD_VERSION,
            "gateway": self.config.gateway.id,
            "ts": payloads.now_iso(),
            "clock": "synced" if clock.synchronised(self.config.clock.sync_check) else "unsynced",
            **body,
        }

    async def _health_loop(self) -> None:
        assert self.publisher is not None and self.config.mqtt is not None
        while True:
            await asyncio.sleep(self.config.mqtt.health_interval)
            self.publisher.publish_direct(self.topics.health, payloads.dumps(await self.health_payload()))

    def healthy(self) -> bool:
        """For the watchdog: no bus worker stuck in a transaction, every task alive."""
        if any(t.done() for t in self.tasks):
            return False
        return not any(w.stuck() for w in self.workers.values())

    async def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        workers = [t for t in self.tasks if t.get_name().startswith("bus-")]
        if workers:
            # Let running polls finish (bounded), then stop the workers.
            deadline = time.monotonic() + STOP_POLLS
            while any(w.started_at is not None for w in self.workers.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.flush()
        if self.publisher is not None:
            await self.publisher.drain(DRAIN_ON_STOP)
            await self.publisher.stop()
        if self.buffer is not None:
            await self.buffer.close()


async def _watchdog(daemon_ref: list[Daemon]) -> None:
    period = systemd.watchdog_interval()
    if period is None:
        return
    while True:
        await asyncio.sleep(period)
        if daemon_ref and daemon_ref[0].healthy():
            systemd.notify("WATCHDOG=1")


async def _start(config: Config, ref: list[Daemon]) -> Daemon:
    daemon = Daemon(config)
    ref[:] = [daemon]
    await daemon.start()
    systemd.notify("READY=1", f"STATUS=polling {len(config.meters)} meters")
    return daemon


async def _signal(stop: asyncio.Event, reload: asyncio.Event) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()


def _reloaded(path: str) -> Config | None:
    """The new config, or None (logged) when it is invalid: the daemon keeps the old one."""
    try:
        new = load_config(path)
    except ProblemsError as exc:
        for line in exc.render().splitlines():
            log.error("reload refused: %s", line.strip())
        return None
    if new.mqtt is None:
        log.error("reload refused: %s has no mqtt section", path)
        return None
    return new


async def serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    ref: list[Daemon] = []
    dog = asyncio.create_task(_watchdog(ref))
    daemon: Daemon | None = None
    try:
        daemon = await _start(config, ref)
        while True:
            await _signal(stop, reload)
            if stop.is_set():
                systemd.notify("STOPPING=1", "STATUS=stopping: storing and delivering")
                log.info("stopping: storing what was read, delivering for up to %.0f s", DRAIN_ON_STOP)
                await daemon.stop()
                return 0
            reload.clear()
            new = _reloaded(config.path)
            if new is None:
                continue
            systemd.notify("RELOADING=1")
            log.info("reloading %s", config.path)
            await daemon.stop()
            config = new
            daemon = await _start(config, ref)
    except SecretError as exc:
        log.error("%s", exc)
        if ref:
            await ref[0].stop()
        return 2
    finally:
        dog.cancel()


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ProblemsError as exc:
        print(exc.render(), flush=True)
        return 2
    if config.mqtt is None:
        print(f"{config_path}: `run` needs an mqtt section (see config/example.yaml)", flush=True)
        return 2
    try:
        read_password(config.mqtt)
    except SecretError as exc:
        print(exc, flush=True)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(config))
    return 0
