"""`meter-collector run`: the daemon. One asyncio loop; the buffer decouples buses from the northbounds.

    Poller (APScheduler) -> BusWorker per bus -> Writer (one SQLite transaction per batch)
                                                   -> Publisher (MQTT, QoS 1, acks clear rows)
                                                   -> Uplink (the data centre, per period: datacenter.py)

A bus never waits on a northbound, a northbound never waits on a bus or on the other northbound
(each has its own bit in a row's ``pending`` mask: buffer.py). A config has mqtt, datacenter or both.
SIGTERM stops polling, stores what was read, gives MQTT a bounded time to deliver, publishes
"offline" and exits. SIGHUP re-reads the config:
an invalid one is logged and ignored; a valid one restarts the pipeline in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from collector import readout
from collector.config import Config, Meter, load_config
from collector.daemon import clock, payloads, systemd
from collector.daemon.buffer import DATACENTER, MQTT, NORTHBOUNDS, AsyncBuffer, CorruptBuffer
from collector.daemon.bus import BusWorker, per_bus
from collector.daemon.calibration import Reading
from collector.daemon.control import Control, ControlSocket, socket_path
from collector.daemon.counters import Ledger
from collector.daemon.health import Health
from collector.daemon.publisher import NoPublisher, Publisher
from collector.daemon.records import Event
from collector.daemon.remote import RemoteCommands
from collector.daemon.scheduler import Poller
from collector.daemon.supervisor import Supervisor
from collector.daemon.writer import Writer
from drivers.model import Model
from drivers.source import ProblemsError

if TYPE_CHECKING:
    from collector.daemon.datacenter import Uplink
    from collector.daemon.web import WebFace

log = logging.getLogger(__name__)

RETENTION_PERIOD = 5.0  #: seconds between retention checks (cheap when nothing is over a limit)
STATUS_PERIOD = 5.0  #: seconds between checks of systemd's status line
DRAIN_ON_STOP = 3.0  #: seconds MQTT gets to deliver on SIGTERM
STOP_POLLS = 5.0  #: seconds running polls get to finish on SIGTERM


def northbounds(config: Config) -> int:
    """The bits (buffer.py) of the northbounds the config has."""
    return (MQTT if config.mqtt is not None else 0) | (DATACENTER if config.datacenter is not None else 0)


NO_NORTHBOUND = "has neither an mqtt nor a datacenter section: `run` needs one of them (see config/example.yaml)"


class Daemon:
    """The running pipeline, built whole from a config and an open buffer (``Daemon.open``)."""

    def __init__(
        self, config: Config, buffer: AsyncBuffer, ledger: Ledger, request_reload: Callable[[], None] | None = None
    ) -> None:
        mqtt = config.mqtt
        self.config = config
        self.buffer = buffer
        self.supervisor = Supervisor(on_change=self._status_line)
        self._last_status = ""
        self.discovered: dict[str, Any] = {}  #: meter id -> model found by discovery (SunSpec)
        self.absent: dict[str, dict[str, str]] = {}  #: meter id -> points it said it does not have
        self.latest: dict[str, Reading] = {}  #: meter id -> its last poll's reading (with web: only)
        self.topics = payloads.Topics(mqtt.topic_prefix if mqtt else "meters", config.gateway.id)
        self.publisher: Publisher | NoPublisher = NoPublisher()
        if mqtt is not None:
            self.publisher = Publisher(
                mqtt, config.gateway.id, buffer, self.topics, window=mqtt.max_inflight, on_connect=self._publish_meta
            )
        #: the data centre (docs/datacenter.md), when the config has datacenter: (reads its keys now)
        self.uplink: Uplink | None = None
        if config.datacenter is not None:
            # Imported only here: the uplink brings cryptography and xml.etree, 7 MB of RSS a gateway
            # without a data centre does not need (docs/benchmarks.md).
            from collector.daemon.datacenter import Uplink

            self.uplink = Uplink(
                config.datacenter, config, buffer, self.read_now, lambda rs: readout.continued(config, rs)
            )
        self.writer = Writer(buffer, self.publisher.offer, config.clock.sync_check, config, ledger)
        self.health = Health(emit=self.writer.event)
        self.workers: dict[str, BusWorker] = {}
        for name, bus in config.buses.items():
            meters = [m for m in config.meters if m.bus == name]
            if meters:
                self.workers[name] = BusWorker(
                    bus, meters, self._reading, self.health, on_model=self._publish_discovered
                )
        self.poller = Poller(list(config.meters), self._enqueue, on_missed=self._missed)
        self.control = Control(self, request_reload)
        self.control_socket = ControlSocket(self.control, socket_path(config.storage.path))
        self.web: WebFace | None = None  #: the status page and /metrics, when the config has web:
        self.remote = RemoteCommands(
            self.control, self.publisher, self.topics, mqtt.protocol if mqtt else "", [m.id for m in config.meters]
        )

    @classmethod
    async def open(cls, config: Config, request_reload: Callable[[], None] | None = None) -> Daemon:
        """Open the buffer (moving a corrupt one aside) and build the pipeline on it. ``request_reload``:
        what a reload command does (SIGHUP's work)."""
        s = config.storage
        wanted = northbounds(config)
        buffer = await AsyncBuffer.open(s.path, max_age=s.max_age, max_size=s.max_size, northbounds=wanted)
        try:
            unwanted = (MQTT | DATACENTER) & ~wanted
            released = await buffer.release(unwanted)
            if released:
                names = " and ".join(n for bit, n in NORTHBOUNDS.items() if bit & unwanted)
                log.warning(
                    "%d buffered message(s) were waiting only for %s, which the config no longer has: "
                    "deleted from the buffer",
                    released,
                    names,
                )
            ledger = Ledger.load(await buffer.ledger(), config.consumption_interval)
            return cls(config, buffer, ledger, request_reload)
        except BaseException:
            await buffer.close()
            raise

    async def start(self) -> None:
        """Run every loop under the supervisor, and the poller."""
        cfg = self.config
        sup = self.supervisor
        await self.control_socket.start()  # first: refuses to start beside another daemon on this buffer
        if cfg.web is not None:
            from collector.daemon.web import WebFace  # aiohttp and prometheus_client only when asked for

            self.web = WebFace(self, cfg.web)
            await self.web.start()
        if cfg.mqtt is not None:
            self.remote.start()  # before the session: it subscribes to cmd/+ on every connect
        await self.publisher.start(sup)
        sup.start("writer", self.writer.run)
        sup.start("retention", self._retention)
        if cfg.mqtt is not None:
            sup.start("health", self._health_loop)
        if self.uplink is not None:
            for name, loop in self.uplink.loops().items():
                sup.start(name, loop)
        sup.start("status", self._status_loop)
        sup.start("clock", clock.ClockWatch(self._clock_step, cfg.clock.step_threshold).run)
        for n, w in self.workers.items():
            sup.start(f"bus-{n}", w.run)
        self.poller.start()
        if not clock.synchronised(cfg.clock.sync_check):
            log.warning(
                'the wall clock is not synchronised (no NTP yet?): readings are marked "clock": "unsynced" until it is'
            )
        buses = ", ".join(f"{n} ({len(w.meters)} meters)" for n, w in self.workers.items())
        northbound = [f"broker {cfg.mqtt.url}"] if cfg.mqtt else []
        if cfg.datacenter is not None:
            dc = cfg.datacenter
            northbound.append(f"data centre {dc.url} (building {dc.building_id}, gateway {dc.gateway_id})")
        log.info(
            "meter-collector running: %d meters on %s; buffer %s; %s",
            len(cfg.meters),
            buses or "no bus",
            cfg.storage.path,
            "; ".join(northbound),
        )

    def status_line(self) -> str:
        """systemd's STATUS=: what an operator sees in `systemctl status`."""
        parts = [f"polling {len(self.config.meters)} meters"]
        if self.writer.failing_since is not None:
            parts.append(f"BUFFER NOT WRITABLE ({self.writer.last_error}), {self.writer.waiting} waiting")
        if self.publisher.configured and not self.publisher.connected:
            parts.append(f"MQTT down: {self.publisher.last_connect_error or 'connecting'}")
        if self.uplink is not None and not self.uplink.online:
            parts.append(f"data centre {self.uplink.describe()}")
        failing = self.supervisor.failing()
        if failing:
            parts.append(f"FAILING: {', '.join(failing)}")
        return "; ".join(parts)

    def _status_line(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            systemd.notify(f"STATUS={line}")

    async def _status_loop(self) -> None:
        while True:
            self._status_line()
            await asyncio.sleep(STATUS_PERIOD)

    def _enqueue(self, meter: Any, slot: datetime) -> None:
        self.workers[meter.bus].enqueue(meter, slot)

    def _missed(self) -> None:
        self.health.missed_slots += 1

    def _meta(self, meter: Meter) -> None:
        meta = payloads.meta(self.config, meter, self.discovered.get(meter.id), self.absent.get(meter.id))
        self.publisher.publish_direct(self.topics.meta(meter.id), meta, qos=1, retain=True)

    def _publish_meta(self) -> None:
        for m in self.config.meters:
            self._meta(m)

    def _publish_discovered(self, meter: Meter, model: Model) -> None:
        self.discovered[meter.id] = model
        self._meta(meter)

    def _reading(self, r: Reading) -> None:
        """A poll's reading to the writer; ``meta`` again when the points the meter lacks change
        (learned from its first complete answer, so the platform knows they will not come)."""
        if self.web is not None:  # the status page's alone: 14 kB a meter kept for nothing otherwise
            self.latest[r.meter] = r
        if r.failure is None and self.absent.get(r.meter, {}).keys() != r.absent.keys():
            self.absent[r.meter] = dict(r.absent)
            self._meta(self.config.meter(r.meter))
        self.writer.reading(r)

    def _clock_step(self, delta: float, before: float, after: float) -> None:
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
            Event(
                "clock_stepped",
                None,
                {
                    "delta_s": round(delta, 3),
                    "from": datetime.fromtimestamp(before, UTC).isoformat().replace("+00:00", "Z"),
                    "to": datetime.fromtimestamp(after, UTC).isoformat().replace("+00:00", "Z"),
                    "slots_skipped": delta > 0,
                },
            )
        )

    async def _retention(self) -> None:
        failed = ""
        while True:
            try:
                rows = await self.publisher.around_retention(self.buffer.enforce_retention)
            except (sqlite3.Error, OSError) as exc:
                if str(exc) != failed:
                    log.error("buffer retention failed: %s; trying again in %.0f s", exc, RETENTION_PERIOD)
                failed = str(exc)
                rows = []
            else:
                failed = ""
            for row in rows:
                assert row.extra is not None
                log.warning(
                    "buffer retention (%s) dropped unsent messages: %d seq(s) now named by drop report seq %d",
                    row.extra["reason"],
                    row.extra["count"],
                    row.seq,
                )
            self.publisher.offer(rows)
            await asyncio.sleep(RETENTION_PERIOD)

    async def read_now(self, meter_ids: list[str], *, with_hidden: bool = False) -> list[Reading]:
        """Fresh readings, read on the bus workers between polls (buses in parallel), not stored."""

        async def one_bus(name: str, ms: list[Meter]) -> list[Reading]:
            return [await self.workers[name].ask(m, with_hidden=with_hidden) for m in ms]

        return await per_bus([self.config.meter(i) for i in meter_ids], one_bus)

    async def health_payload(self) -> dict[str, Any]:
        stats = await self.buffer.stats()
        pub = {
            **asdict(self.publisher.stats),
            "connected": self.publisher.connected,
            "inflight": self.publisher.inflight,
            **({"last_connect_error": self.publisher.last_connect_error} if self.publisher.last_connect_error else {}),
        }
        body = self.health.payload(stats, pub if self.publisher.configured else None)
        if self.uplink is not None:
            body["buffer"]["datacenter_depth"] = stats.get("datacenter_depth")
            body["datacenter"] = self.uplink.payload(stats)
        body["buffer"]["waiting"] = self.writer.waiting
        body["buffer"]["not_stored"] = self.writer.not_stored
        if self.writer.failing_since is not None:
            body["buffer"]["write_error"] = self.writer.last_error
        body["commands"] = asdict(self.remote.stats)
        tasks = self.supervisor.payload()
        if tasks:
            body["tasks"] = tasks
        return {
            "v": payloads.PAYLOAD_VERSION,
            "gateway": self.config.gateway.id,
            "ts": payloads.now_iso(),
            "clock": "synced" if clock.synchronised(self.config.clock.sync_check) else "unsynced",
            **body,
        }

    async def _health_loop(self) -> None:
        assert self.config.mqtt is not None
        while True:
            await asyncio.sleep(self.config.mqtt.health_interval)
            self.publisher.publish_direct(self.topics.health, payloads.dumps(await self.health_payload()))

    def healthy(self) -> bool:
        """For the watchdog: no bus worker stuck in a transaction, no task failing again and again."""
        if not self.supervisor.alive() or self.supervisor.failing():
            return False
        return not any(w.stuck() for w in self.workers.values())

    async def stop(self) -> None:
        """Also after a start that failed half-way: whatever was started stops, the buffer closes."""
        self.poller.stop()
        await self.remote.stop()  # commands still running (a read waiting for its bus) end unanswered
        # Let running polls finish (bounded), then stop the workers.
        deadline = time.monotonic() + STOP_POLLS
        while any(w.started_at is not None for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Everything but MQTT stops; what was read is stored, then MQTT gets its time to deliver it.
        await self.supervisor.stop(lambda name: not name.startswith("mqtt-"))
        await self.writer.flush()
        await self.publisher.drain(DRAIN_ON_STOP)
        await self.supervisor.stop()
        await self.publisher.stop()
        if self.web is not None:
            await self.web.stop()
        await self.control_socket.stop()
        await self.buffer.close()


async def _watchdog(daemon_ref: list[Daemon]) -> None:
    period = systemd.watchdog_interval()
    if period is None:
        return
    while True:
        await asyncio.sleep(period)
        if daemon_ref and daemon_ref[0].healthy():
            systemd.notify("WATCHDOG=1")


async def _start(config: Config, ref: list[Daemon], request_reload: Callable[[], None] | None = None) -> Daemon:
    daemon = await Daemon.open(config, request_reload)
    ref[:] = [daemon]
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    systemd.notify("READY=1", f"STATUS={daemon.status_line()}")
    return daemon


async def _signal(stop: asyncio.Event, reload: asyncio.Event) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()


def _reloaded(path: str) -> Config | None:
    """The new config, or None (logged) when `check` would refuse it: the daemon keeps the old one."""
    try:
        new = load_config(path)
    except ProblemsError as exc:
        for line in exc.render().splitlines():
            log.error("reload refused: %s", line.strip())
        return None
    if not northbounds(new):
        log.error("reload refused: %s %s", path, NO_NORTHBOUND)
        return None
    for w in new.warnings:
        log.warning("reload: %s", w)
    return new


#: what can stop a daemon from starting that is a fact of this machine, not a bug: logged, no traceback
START_ERRORS = (OSError, sqlite3.Error, CorruptBuffer, RuntimeError)


async def serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    ref: list[Daemon] = []
    dog = asyncio.create_task(_watchdog(ref))
    try:
        try:
            daemon = await _start(config, ref, reload.set)
        except START_ERRORS as exc:
            log.critical("cannot start: %s", _cause(exc))
            return 1
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
                systemd.notify(f"STATUS={daemon.status_line()}; last reload refused (see the log)")
                continue
            systemd.notify("RELOADING=1")
            log.info("reloading %s", config.path)
            await daemon.stop()
            try:
                daemon = await _start(new, ref, reload.set)
                config = new
            except START_ERRORS as exc:
                log.error("reload failed: %s; going on with the previous config", _cause(exc))
                daemon = await _start(config, ref, reload.set)
    finally:
        dog.cancel()


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ProblemsError as exc:
        print(exc.render(), flush=True)
        return 2
    if not northbounds(config):
        print(f"{config_path} {NO_NORTHBOUND}", flush=True)
        return 2
    for w in config.warnings:
        log.warning("%s", w)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(config))
    return 0
