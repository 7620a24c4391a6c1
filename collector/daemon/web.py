"""The web face: a status page for the technician on site, /metrics for Prometheus, /api for scripts.

aiohttp serves it in the daemon's own event loop (docs/operations.md, "Status page and metrics"):
no thread, and nothing here blocks the loop. The buffer is read through its async face, a fresh read
goes through the control table (``Control.handle("read", ...)``, the bus worker reads between polls,
one master on the line), and everything else is the daemon's state in memory. aiohttp and
prometheus_client are imported here only, and this module only when ``web:`` is in the config.

Routes: ``/`` (the page; ``?raw=1`` adds registers and raw values), ``/metrics``, ``/api/status``,
``/api/meters``, ``/api/meters/{id}``, ``/api/read?meter=ID`` (schemas in docs/schemas/api-*.json).
With ``web.password_file`` every route asks for HTTP basic auth. A port that cannot be bound is
logged once and the daemon goes on without the page: polling and delivery matter more.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hmac
import html
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from collector import __version__, readout
from collector.config import Config, Meter, Web
from collector.daemon import clock, payloads
from collector.daemon.calibration import GOOD, Reading
from collector.daemon.health import BusHealth, MeterHealth, iso_seconds

if TYPE_CHECKING:
    from collector.daemon.service import Daemon

log = logging.getLogger(__name__)

REFRESH_S = 5  #: seconds between the page's refreshes of its live part
SHUTDOWN_S = 1.0  #: seconds open requests get when the daemon stops
READ_RETRY_S = 3  #: Retry-After of a fresh read asked while another runs
AUTH_LOG_PERIOD = 60.0  #: wrong credentials are logged at most this often
PREFIX = "meter_collector"


class WebFace:
    """The HTTP server of one running Daemon: ``start()`` after the control socket, ``stop()`` before it."""

    def __init__(self, daemon: Daemon, cfg: Web) -> None:
        self.daemon = daemon
        self.cfg = cfg
        self.runner: web.AppRunner | None = None
        self._password: bytes | None = None  #: from web.password_file, read at start
        self._read_lock = asyncio.Lock()  #: one fresh read at a time: the bus is shared with polling
        self._wrong_auth = 0  #: wrong credentials since the last log line
        self._wrong_auth_logged = -AUTH_LOG_PERIOD
        self.metrics = DaemonMetrics(daemon)
        self.registry = CollectorRegistry(auto_describe=False)  #: private: never the process-wide one
        self.registry.register(self.metrics)

    async def start(self) -> None:
        """Serve; a password file that cannot be read or a port that cannot be bound is logged, not raised."""
        cfg = self.cfg
        if cfg.password_file:
            try:
                self._password = await asyncio.to_thread(_read_secret, cfg.password_file)
            except OSError as exc:
                log.error("web.password_file %s: %s; the status page is not served", cfg.password_file, exc.strerror)
                return
            if not self._password:
                log.error("web.password_file %s is empty; the status page is not served", cfg.password_file)
                return
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_get("/api/meters", self._api_meters)
        app.router.add_get("/api/meters/{id}", self._api_meter)
        app.router.add_get("/api/read", self._api_read)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host or None, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("web.listen %s: %s; going on without the status page", cfg.listen, _bind_error(exc))
            await runner.cleanup()
            return
        self.runner = runner
        auth = f'asks for user "{cfg.username}" and web.password_file' if self._password else "no password"
        log.info("status page on http://%s/ (%s)", cfg.listen, auth)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- the guard -------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._password is not None and not self._authorised(request):
            return web.Response(
                status=401,
                text="401: this page asks for the user name and the password of web.password_file\n",
                headers={"WWW-Authenticate": f'Basic realm="meter-collector {self.daemon.config.gateway.id}"'},
            )
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        if header is None:
            return False  # a browser's first request: it asks the person, nothing to log
        scheme, _, token = header.partition(" ")
        user, password = b"", b""
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, ValueError):  # not base64: wrong, like a wrong password
                user, _, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        assert self._password is not None
        # Both compared in constant time, and both always: a timing difference tells nothing.
        good_user = hmac.compare_digest(user, self.cfg.username.encode())
        good_password = hmac.compare_digest(password, self._password)
        if good_user and good_password:
            return True
        self._wrong_auth += 1
        now = time.monotonic()
        if now - self._wrong_auth_logged >= AUTH_LOG_PERIOD:
            log.warning(
                "status page: %d request(s) with a wrong user name or password, the latest from %s",
                self._wrong_auth,
                request.remote,
            )
            self._wrong_auth, self._wrong_auth_logged = 0, now
        return False

    # --- routes ----------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("raw") == "1"
        try:
            health = await self.daemon.health_payload()
        except (sqlite3.Error, OSError) as exc:
            health = {"error": f"the buffer cannot be read: {exc}"}
        live = render_live(self.daemon, health, raw=raw)
        if request.query.get("part") == "1":  # the page's own refresh: only what changes
            return web.Response(text=live, content_type="text/html")
        nonce = secrets.token_urlsafe(16)
        page = render_page(self.daemon.config, live, raw=raw, nonce=nonce)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return web.Response(text=page, content_type="text/html", headers={"Content-Security-Policy": csp})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            self.metrics.buffer = await self.daemon.buffer.stats()
        except (sqlite3.Error, OSError) as exc:
            self.metrics.buffer = {"error": str(exc)}
        body = generate_latest(self.registry)  # the collector reads the daemon now, between two awaits
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _api_status(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("raw") == "1"
        try:
            body = await self.daemon.health_payload()
        except (sqlite3.Error, OSError) as exc:
            return _json({"error": f"the buffer cannot be read: {exc}"}, status=503)
        config = self.daemon.config
        body["latest"] = {m.id: self._latest(m.id, raw=raw) for m in config.meters}
        return _json(body)

    async def _api_meters(self, request: web.Request) -> web.StreamResponse:
        d = self.daemon
        return _json({**_envelope(d.config), "meters": [meter_summary(d, m) for m in d.config.meters]})

    async def _api_meter(self, request: web.Request) -> web.StreamResponse:
        d = self.daemon
        meter_id = request.match_info["id"]
        meter = _find(d.config, meter_id)
        if meter is None:
            return _json({"error": f'unknown meter "{meter_id}"'}, status=404)
        mh = d.health.meters.get(meter.id) or MeterHealth()
        return _json(
            {
                **_envelope(d.config),
                "meter": meter_summary(d, meter),
                "health": health_counts(mh),
                "latest": self._latest(meter.id, raw=request.query.get("raw") == "1"),
            }
        )

    async def _api_read(self, request: web.Request) -> web.StreamResponse:
        """A fresh read on the bus worker, not stored; one at a time (429 while another runs)."""
        meter_id = request.query.get("meter", "")
        if not meter_id:
            return _json({"ok": False, "error": "name the meter: /api/read?meter=ID"}, status=400)
        if _find(self.daemon.config, meter_id) is None:
            return _json({"ok": False, "error": f'unknown meter "{meter_id}"'}, status=404)
        if self._read_lock.locked():
            return _json(
                {"ok": False, "error": "another read is running; try again in a few seconds"},
                status=429,
                headers={"Retry-After": str(READ_RETRY_S)},
            )
        async with self._read_lock:
            answer = await self.daemon.control.handle(
                "read", {"meter": meter_id, "raw": request.query.get("raw") == "1"}
            )
        return _json(answer, status=200 if answer.get("ok") else 503)

    def _latest(self, meter_id: str, *, raw: bool) -> dict[str, Any] | None:
        r = self.daemon.latest.get(meter_id)
        return None if r is None else readout.reading_doc(r, self.daemon.config, raw=raw)


# --- /metrics ------------------------------------------------------------------------------------


class DaemonMetrics(Collector):
    """The daemon's state as Prometheus metrics, read at scrape time (nothing is counted twice: the
    numbers are the ones the health payload shows). ``buffer``: the buffer's stats, read by the
    handler just before (SQLite is async; ``collect`` is not)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.buffer: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        config = d.config
        yield InfoMetricFamily(PREFIX, "this gateway", value={"gateway": config.gateway.id, "version": __version__})
        yield from self._buffer()
        if d.publisher.configured:
            yield from self._mqtt()
        if d.uplink is not None:
            yield from self._datacenter()
        yield from self._meters()
        yield from self._buses()
        yield _gauge(
            "clock_synchronised", "1 when the wall clock is trusted (NTP)", clock.synchronised(config.clock.sync_check)
        )
        yield _counter("clock_steps", "wall-clock steps seen (polling realigned)", d.health.clock_steps)
        yield _counter("missed_slots", "poll slots the scheduler missed", d.health.missed_slots)
        restarts = CounterMetricFamily(
            f"{PREFIX}_task_restarts", "restarts of a daemon loop after an error", labels=["task"]
        )
        for name, state in d.supervisor.payload().items():
            restarts.add_metric([name], state["restarts"])
        yield restarts

    def _buffer(self) -> Iterator[Metric]:
        b, w = self.buffer, self.daemon.writer
        if "error" not in b:
            yield _gauge("buffer_depth", "messages stored and not yet acknowledged by the broker", b.get("depth") or 0)
            yield _gauge(
                "buffer_oldest_unsent_age_seconds",
                "age of the oldest unsent message (0 when none waits)",
                b.get("oldest_unsent_age_s") or 0,
            )
            yield _gauge("buffer_file_bytes", "size of the buffer file and its WAL", b.get("file_bytes") or 0)
            yield _counter(
                "buffer_dropped",
                "unsent messages dropped by retention (max_age, max_size), reported to the platform",
                b.get("dropped_total") or 0,
            )
        yield _gauge("buffer_readable", "0 when the buffer could not be read for this scrape", "error" not in b)
        yield _gauge(
            "buffer_writable", "0 while the buffer cannot be written (disk full, I/O error)", w.failing_since is None
        )
        yield _gauge("writer_waiting", "readings and events in memory waiting to be stored", w.waiting)
        yield _counter("writer_not_stored", "messages dropped because the buffer could not be written", w.not_stored)

    def _mqtt(self) -> Iterator[Metric]:
        p = self.daemon.publisher
        yield _gauge("mqtt_connected", "1 while the MQTT session is up", p.connected)
        yield _gauge("mqtt_inflight", "messages published and awaiting PUBACK", p.inflight)
        yield _counter("mqtt_messages_published", "messages published (QoS 1, from the buffer)", p.stats.published)
        yield _counter("mqtt_messages_acked", "messages the broker acknowledged (then deleted)", p.stats.acked)
        yield _counter("mqtt_messages_rejected", "messages the broker refused (kept, retried)", p.stats.rejected)
        yield _counter("mqtt_connects", "MQTT sessions established", p.stats.connects)
        yield _counter("mqtt_disconnects", "MQTT sessions lost", p.stats.disconnects)

    def _datacenter(self) -> Iterator[Metric]:
        u = self.daemon.uplink
        assert u is not None
        s = u.status
        yield _gauge("datacenter_online", "1 while logged in to the data centre", u.online)
        yield _counter("datacenter_packets_sent", "report and continuous packets sent", s.sent)
        yield _counter("datacenter_packets_acked", "packets the data centre acknowledged", s.acked)
        if "error" not in self.buffer:
            yield _gauge(
                "datacenter_pending_rows",
                "readings stored and not yet acknowledged by the data centre",
                self.buffer.get("datacenter_depth") or 0,
            )
        if s.clock_offset is not None:
            yield _gauge(
                "datacenter_clock_offset_seconds",
                "the data centre's clock minus ours, at its last time (never applied)",
                s.clock_offset.total_seconds(),
            )

    def _meters(self) -> Iterator[Metric]:
        d = self.daemon
        m = ["meter"]
        info = GaugeMetricFamily(
            f"{PREFIX}_meter_info", "a configured meter (always 1)", labels=[*m, "model", "bus", "category"]
        )
        polls = CounterMetricFamily(f"{PREFIX}_meter_polls", "polls of the meter", labels=m)
        failures = CounterMetricFamily(f"{PREFIX}_meter_failures", "polls the meter did not answer at all", labels=m)
        partial = CounterMetricFamily(f"{PREFIX}_meter_partial_polls", "polls with some point in error", labels=m)
        skipped = CounterMetricFamily(f"{PREFIX}_meter_skipped_polls", "slots not polled", labels=[*m, "reason"])
        online = GaugeMetricFamily(f"{PREFIX}_meter_online", "1 while the meter answers", labels=m)
        last = GaugeMetricFamily(
            f"{PREFIX}_meter_last_success_timestamp_seconds", "unix time of the last reading with values", labels=m
        )
        for meter in d.config.meters:
            h = d.health.meters.get(meter.id) or MeterHealth()
            info.add_metric([meter.id, meter.model.name, meter.bus, meter.category or ""], 1)
            polls.add_metric([meter.id], h.polls)
            failures.add_metric([meter.id], h.failed)
            partial.add_metric([meter.id], h.partial)
            skipped.add_metric([meter.id, "overlap"], h.skipped_overlap)
            skipped.add_metric([meter.id, "backoff"], h.skipped_backoff)
            online.add_metric([meter.id], float(h.down_since is None))
            if h.last_good is not None:
                last.add_metric([meter.id], h.last_good)
        yield from (info, polls, failures, partial, skipped, online, last)

    def _buses(self) -> Iterator[Metric]:
        d = self.daemon
        b = ["bus"]
        transactions = CounterMetricFamily(f"{PREFIX}_bus_transactions", "requests sent on the bus", labels=b)
        timeouts = CounterMetricFamily(f"{PREFIX}_bus_timeouts", "requests that got no reply in time", labels=b)
        garbled = CounterMetricFamily(
            f"{PREFIX}_bus_garbled",
            "timeouts that heard bytes but no reply (noise, baud rate, a second master)",
            labels=b,
        )
        failed = CounterMetricFamily(
            f"{PREFIX}_bus_failed_polls", "polls on the bus a meter did not answer (its meters' failures)", labels=b
        )
        busy = CounterMetricFamily(f"{PREFIX}_bus_busy_seconds", "time the bus spent in transactions", labels=b)
        for name in d.workers:
            h = d.health.buses.get(name) or BusHealth()
            transactions.add_metric([name], h.transactions)
            timeouts.add_metric([name], h.timeouts)
            garbled.add_metric([name], h.garbled)
            failed.add_metric([name], sum(d.health.meter(m).failed for m in d.workers[name].meters))
            busy.add_metric([name], h.busy_s)
        yield from (transactions, timeouts, garbled, failed, busy)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """``name`` without ``_total``: prometheus_client adds it."""
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))


# --- /api ----------------------------------------------------------------------------------------


def _envelope(config: Config) -> dict[str, Any]:
    return {"v": payloads.PAYLOAD_VERSION, "gateway": config.gateway.id, "ts": payloads.now_iso()}


def _find(config: Config, meter_id: str) -> Meter | None:
    try:
        return config.meter(meter_id)
    except KeyError:
        return None


def meter_state(d: Daemon, meter_id: str) -> str:
    """waiting (not polled yet), online, offline (not answering)."""
    h = d.health.meters.get(meter_id)
    if h is None or h.polls == 0:
        return "waiting"
    return "online" if h.down_since is None else "offline"


def meter_summary(d: Daemon, m: Meter) -> dict[str, Any]:
    """What a meter is (config) and how it is doing (health, its latest reading's quality)."""
    h = d.health.meters.get(m.id) or MeterHealth()
    r = d.latest.get(m.id)
    bus = d.config.buses[m.bus]
    return {
        "id": m.id,
        "model": (r.model if r is not None and r.model is not None else m.model).name,
        "bus": m.bus,
        "bus_line": bus.describe(),
        "address": m.address,
        "category": m.category,
        "category_name": d.config.categories.get(m.category) if m.category else None,
        "interval_s": m.interval,
        "points": list(m.points),
        "state": meter_state(d, m.id),
        "online": h.down_since is None,
        "offline_since": _iso(h.down_since),
        "last_good": _iso(h.last_good),
        "last_error": h.last_error or None,
        "quality": r.quality if r is not None else None,
        "last_read": readout.iso(r.ts) if r is not None else None,
    }


def health_counts(h: MeterHealth) -> dict[str, int]:
    return {
        "polls": h.polls,
        "good": h.good,
        "partial": h.partial,
        "failed": h.failed,
        "skipped_overlap": h.skipped_overlap,
        "skipped_backoff": h.skipped_backoff,
    }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_seconds(ts)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(_finite(body), ensure_ascii=False, allow_nan=False, default=str)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


# --- the page ------------------------------------------------------------------------------------

esc = html.escape  #: every text from the config, a meter or an error goes through it


def _clock_time(ts: float, now: float) -> str:
    """10:02:13 today, 2026-11-27 10:02:13 on another day (the gateway's local time)."""
    t = datetime.fromtimestamp(ts)
    return t.strftime("%H:%M:%S" if t.date() == datetime.fromtimestamp(now).date() else "%Y-%m-%d %H:%M:%S")


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 36 * 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when(ts: float, now: float) -> str:
    return f"{_clock_time(ts, now)} ({_ago(now - ts)} ago)"


def render_live(d: Daemon, health: dict[str, Any], *, raw: bool) -> str:
    """The part of the page that changes: summary, meters, buses. Every dynamic text is escaped."""
    now = time.time()
    config = d.config
    out: list[str] = []
    if "error" in health:
        out.append(f'<p class="alert">{esc(health["error"])}</p>')
        health = {}
    states = {m.id: meter_state(d, m.id) for m in config.meters}
    down = [m for m, s in states.items() if s == "offline"]
    out.append('<section class="summary">')
    if d.publisher.configured:
        out.append(_summary_mqtt(d))
    if d.uplink is not None:
        out.append(_summary_datacenter(d))
    out.append(_summary_buffer(health))
    synced = clock.synchronised(config.clock.sync_check)
    out.append(
        _tile(
            "Clock",
            "synchronised" if synced else "NOT synchronised",
            "ok" if synced else "bad",
            "" if synced else "no NTP yet: readings are marked unsynced",
        )
    )
    answering = sum(1 for s in states.values() if s == "online")
    out.append(
        _tile(
            "Meters",
            f"{answering} of {len(states)} answering",
            "bad" if down else "ok",
            f"not answering: {', '.join(down)}" if down else "",
        )
    )
    out.append("</section>")
    if down:
        out.append(
            f'<p class="alert" id="offline-alert">{len(down)} meter(s) not answering: {esc(", ".join(down))}</p>'
        )
    out.append('<section class="meters">')
    for m in config.meters:
        out.append(_meter_card(d, m, states[m.id], now, raw=raw))
    out.append("</section>")
    out.append(_buses(d))
    zone = time.strftime("%Z")
    out.append(
        f'<p class="stamp">updated <span id="updated">{_clock_time(now, now)}</span> '
        f"(gateway time{', ' + esc(zone) if zone else ''})</p>"
    )
    return "\n".join(out)


def _tile(title: str, value: str, state: str, note: str) -> str:
    note_html = f'<span class="note">{esc(note)}</span>' if note else ""
    return f'<div class="tile {state}"><span class="k">{esc(title)}</span><b>{esc(value)}</b>{note_html}</div>'


def _summary_mqtt(d: Daemon) -> str:
    p = d.publisher
    s = p.stats
    counts = f"{s.published} published, {s.acked} acked, {s.rejected} rejected"
    if p.connected:
        return _tile("MQTT", "connected", "ok", counts)
    return _tile("MQTT", "DOWN", "bad", f"{p.last_connect_error or 'connecting'}; {counts}")


def _summary_datacenter(d: Daemon) -> str:
    assert d.uplink is not None
    s = d.uplink.status
    notes = [f"{s.sent} sent, {s.acked} acked"]
    if s.clock_offset is not None:
        notes.append(f"its clock {s.clock_offset.total_seconds():+.0f} s from ours")
    if d.uplink.online:
        return _tile("Data centre", "online", "ok", "; ".join(notes))
    return _tile("Data centre", s.state.value.upper(), "bad", "; ".join([s.last_error or "connecting", *notes]))


def _summary_buffer(health: dict[str, Any]) -> str:
    b = health.get("buffer")
    if not b:
        return _tile("Buffer", "unknown", "bad", "")
    depth, age = b.get("depth") or 0, b.get("oldest_unsent_age_s")
    notes = [f"oldest unsent {_ago(age)} old" if age else "nothing waiting"]
    if "datacenter_depth" in b:
        notes.append(f"{b['datacenter_depth'] or 0} reading(s) for the data centre")
        if "mqtt" not in health:
            depth = b["datacenter_depth"] or 0
    if b.get("dropped_total"):
        notes.append(f"{b['dropped_total']} dropped by retention")
    if b.get("not_stored"):
        notes.append(f"{b['not_stored']} not stored")
    if b.get("write_error"):
        notes.append(f"NOT WRITABLE: {b['write_error']}")
    bad = bool(b.get("write_error")) or (age or 0) > 3600
    return _tile("Buffer", f"{depth} unsent", "bad" if bad else "ok", "; ".join(notes))


def _where(d: Daemon, m: Meter) -> str:
    bus = d.config.buses[m.bus]
    addr = f"unit {m.address}" if isinstance(m.address, int) else f"address {m.address}"
    cat = ""
    if m.category:
        name = d.config.categories.get(m.category, "")
        cat = f" · {esc(m.category)}{' ' + esc(name) if name else ''}"
    return f"{esc(m.model.name)} · bus {esc(bus.name)} ({esc(bus.describe())}) · {esc(addr)}{cat}"


def _meter_card(d: Daemon, m: Meter, state: str, now: float, *, raw: bool) -> str:
    h = d.health.meters.get(m.id) or MeterHealth()
    r = d.latest.get(m.id)
    quality = r.quality if r is not None and r.failure is None else ""
    badge = {"online": "PARTIAL" if quality and quality != GOOD else "OK", "offline": "OFFLINE"}.get(state, "WAITING")
    cls = {"OK": "ok", "PARTIAL": "warn", "OFFLINE": "bad", "WAITING": "idle"}[badge]
    out = [
        f'<article class="meter {cls}" id="meter-{esc(m.id)}" data-meter="{esc(m.id)}" data-state="{state}">',
        f'<h2><span class="id">{esc(m.id)}</span> <span class="badge {cls}">{badge}</span></h2>',
        f'<p class="where">{_where(d, m)}</p>',
    ]
    if state == "offline":
        since = _clock_time(h.down_since, now) if h.down_since is not None else "?"
        out.append(f'<p class="problem">OFFLINE since {since} — {esc(h.last_error or "no answer")}</p>')
    if r is None:
        out.append('<p class="note">waiting for the first poll</p>')
    elif r.failure is None:
        out.append(_values_table(d, m, r, raw=raw))
    last_good = f"last good reading {_when(h.last_good, now)}" if h.last_good else "no good reading since the start"
    read_at = f" · polled {_clock_time(r.ts.timestamp(), now)}" if r is not None else ""
    failed = f", {h.failed} failed" if h.failed else ""
    out.append(f'<p class="meta">{last_good}{read_at} · {h.polls} polls{failed} · quality {esc(quality or "-")}</p>')
    out.append("</article>")
    return "\n".join(out)


def _values_table(d: Daemon, m: Meter, r: Reading, *, raw: bool) -> str:
    model = r.model or m.model

    def listed(name: str) -> bool:
        return name in r.values or name in r.errors or name in r.absent or (raw and name in r.raw)

    names = [p.name for p in model.points if listed(p.name)]
    names += [n for n in r.errors if not model.has(n)]
    head = (
        (
            "<tr><th>point</th><th>registers</th><th class='num'>raw</th><th class='num'>meter</th>"
            "<th class='num'>value</th><th>unit</th></tr>"
        )
        if raw
        else ""
    )
    rows = []
    for name in names:
        unit = esc(model.point(name).unit) if model.has(name) else ""
        if name in r.absent:
            cell = f'<td colspan="{5 if raw else 2}" class="absent">absent: {esc(r.absent[name])}</td>'
        elif name in r.errors and name not in r.raw:
            cell = f'<td colspan="{5 if raw else 2}" class="err">error: {esc(r.errors[name])}</td>'
        elif raw:
            digits = 4 if model.protocol in ("modbus", "sunspec") else 2
            regs = " ".join(f"{w:0{digits}X}" for w in r.registers.get(name, []))
            cell = (
                f'<td class="mono">{esc(regs)}</td><td class="num">{readout.fmt(r.raw.get(name))}</td>'
                f'<td class="num">{readout.fmt(r.meter_values.get(name))}</td>'
                f'<td class="num">{readout.fmt(r.values.get(name))}</td><td>{unit}</td>'
            )
        else:
            cell = f'<td class="num">{readout.fmt(r.values.get(name))}</td><td class="unit">{unit}</td>'
        rows.append(f'<tr data-point="{esc(name)}"><th>{esc(name)}</th>{cell}</tr>')
    cls = "values raw" if raw else "values"
    return f'<div class="scroll"><table class="{cls}">{head}{"".join(rows)}</table></div>'


def _buses(d: Daemon) -> str:
    rows = []
    for name, w in d.workers.items():
        h = d.health.buses.get(name) or BusHealth()
        failed = sum(d.health.meter(m).failed for m in w.meters)
        rows.append(
            f"<tr><th>{esc(name)}</th><td>{esc(w.bus.describe())}</td><td class='num'>{h.transactions}</td>"
            f"<td class='num'>{h.timeouts}</td><td class='num'>{h.garbled}</td><td class='num'>{failed}</td>"
            f"<td class='num'>{h.busy_s:.1f}</td></tr>"
        )
    return (
        '<section class="buses"><h2>Buses</h2><table><tr><th>bus</th><th>line</th><th>requests</th>'
        f"<th>timeouts</th><th title='timeouts that heard bytes but no reply'>garbled</th><th>failed polls</th>"
        f"<th>busy s</th></tr>{''.join(rows)}</table></section>"
    )


def render_page(config: Config, live: str, *, raw: bool, nonce: str) -> str:
    g = config.gateway
    where = " · ".join(esc(x) for x in (g.site, g.building) if x)
    toggle = '<a href="?">values</a>' if raw else '<a href="?raw=1">raw registers</a>'
    return PAGE.format(
        gateway=esc(g.id),
        where=f" <small>{where}</small>" if where else "",
        toggle=toggle,
        live=live,
        nonce=nonce,
        refresh_ms=REFRESH_S * 1000,
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{gateway} · meter-collector</title>
<style nonce="{nonce}">
:root {{ color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --idle: #6e7781;
  --line: #d0d7de; --card: #fff; --bg: #f6f8fa; --fg: #1f2328; }}
@media (prefers-color-scheme: dark) {{ :root {{ --card: #161b22; --bg: #0d1117; --fg: #e6edf3; --line: #30363d; }} }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; font: 15px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }}
header {{ display: flex; flex-wrap: wrap; gap: .5em 1em; align-items: baseline; padding: .6em 1em;
  background: var(--card); border-bottom: 1px solid var(--line); }}
header h1 {{ font-size: 1.15em; margin: 0; }} header small {{ color: var(--idle); font-weight: normal; }}
header nav {{ margin-left: auto; display: flex; gap: 1em; }}
main {{ padding: .75em; max-width: 1200px; margin: 0 auto; }}
a {{ color: #0969da; }}
.summary {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: .5em; }}
.tile {{ background: var(--card); border: 1px solid var(--line); border-left: 5px solid var(--ok); border-radius: 6px;
  padding: .4em .6em; }}
.tile .k {{ display: block; font-size: .8em; color: var(--idle); text-transform: uppercase; }}
.tile .note {{ display: block; font-size: .85em; overflow-wrap: anywhere; }}
.tile.bad {{ border-left-color: var(--bad); }} .tile.bad b {{ color: var(--bad); }}
.alert, .problem {{ background: var(--bad); color: #fff; padding: .5em .7em; border-radius: 6px; font-weight: 600; }}
.meters {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: .6em; margin-top: .6em; }}
.meter {{ background: var(--card); border: 1px solid var(--line); border-top: 5px solid var(--ok); border-radius: 6px;
  padding: .5em .7em; min-width: 0; }}
.meter.warn {{ border-top-color: var(--warn); }} .meter.bad {{ border-top-color: var(--bad); }}
.meter.idle {{ border-top-color: var(--idle); }}
.meter h2 {{ font-size: 1.1em; margin: 0; display: flex; justify-content: space-between; gap: .5em; }}
.badge {{ font-size: .75em; padding: .1em .5em; border-radius: 1em; color: #fff; background: var(--ok); }}
.badge.warn {{ background: var(--warn); }} .badge.bad {{ background: var(--bad); }}
.badge.idle {{ background: var(--idle); }}
.where, .meta, .note, .stamp {{ color: var(--idle); font-size: .85em; margin: .2em 0; overflow-wrap: anywhere; }}
table {{ width: 100%; border-collapse: collapse; margin: .3em 0; }}
th, td {{ text-align: left; padding: .15em .3em; border-bottom: 1px solid var(--line); vertical-align: top; }}
th {{ font-weight: 500; }}
.values th {{ white-space: nowrap; }} .scroll {{ overflow-x: auto; }} .raw {{ font-size: .85em; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.unit {{ width: 3.5em; color: var(--idle); }}
.mono {{ font-family: ui-monospace, monospace; font-size: .9em; min-width: 4.5em; }}
.err {{ color: var(--bad); }} .absent {{ color: var(--idle); font-style: italic; }}
.buses {{ margin-top: .8em; overflow-x: auto; }} .buses h2 {{ font-size: 1em; margin: .2em 0; }}
#lost {{ display: none; }} body[data-lost="1"] #lost {{ display: block; }}
</style></head>
<body data-refreshes="0">
<header><h1>{gateway}{where}</h1>
<nav>{toggle} <a href="metrics">metrics</a> <a href="api/status">json</a></nav></header>
<main>
<p class="alert" id="lost">The gateway does not answer: what you see is from the last update.</p>
<div id="live">
{live}
</div>
</main>
<noscript><p class="stamp">This page refreshes itself with JavaScript; reload it by hand.</p></noscript>
<script nonce="{nonce}">
(function () {{
  var live = document.getElementById("live"), body = document.body, n = 0;
  function refresh() {{
    var q = new URLSearchParams(location.search); q.set("part", "1");
    fetch(location.pathname + "?" + q.toString(), {{cache: "no-store", credentials: "same-origin"}})
      .then(function (r) {{ if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); }})
      .then(function (t) {{ live.innerHTML = t; body.setAttribute("data-refreshes", String(++n));
                           body.setAttribute("data-lost", "0"); }})
      .catch(function () {{ body.setAttribute("data-lost", "1"); }});
  }}
  setInterval(refresh, {refresh_ms});
}})();
</script>
</body></html>
"""


def _read_secret(path: str) -> bytes:
    """The page's password: the file's text without its final newline (as for mqtt.password_file)."""
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n").encode()


def _bind_error(exc: OSError) -> str:
    """``address already in use``: the OS's words, without asyncio's wrapping."""
    if exc.errno is not None:
        text = os.strerror(exc.errno)
        hint = {
            errno.EADDRINUSE: " (another program listens there: `ss -ltnp` names it)",
            errno.EADDRNOTAVAIL: " (this machine has no such address)",
            errno.EACCES: " (ports below 1024 need privileges: use 8080)",
        }.get(exc.errno, "")
        return text[:1].lower() + text[1:] + hint
    return str(exc) or type(exc).__name__
