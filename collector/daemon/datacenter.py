"""The data-centre northbound (docs/datacenter.md): the outbox as the uplink's ``ReportSource``, the
period clock, and the session (collector/uplink/session.py) kept up under the supervisor.

* Periods are ``(end - period, end]`` with ``end`` a multiple of ``period`` in Unix time, like the
  poller's slots (scheduler.py): the reading at slot 12:15:00 is the 12:15 period's value. A period
  closes GRACE after its end, when the poll of its last slot is stored.
* At each close the buffer keeps, per meter and period, only the reading the data centre gets (the
  last with values, else the last) and clears the data-centre bit of the others
  (``Buffer.datacenter_compact``): an outage of any length costs one row per meter and period.
* ``pending`` hands the session the oldest closed periods with rows still waiting for the data
  centre, one ``Pending`` per period, keyed by the period's end (Unix seconds, sent as
  ``<sequence>``). The newest closed period goes as ``report``; one sent before (on any connection,
  kept in the buffer) or older than the newest goes as ``continuous`` (断点续传).
* ``acknowledged`` clears the data-centre bit of that period's rows; a row no northbound needs is
  deleted.
* ``collect_now`` (the data centre's ``query``) is a fresh read of every meter through the bus
  workers (``Daemon.read_now``), not stored; ``period_changed`` applies the platform's period until
  the next reload or restart.

The data centre's time is only a reference: its offset from ours is in health, the clock is never
set from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from collector.config import Config, Datacenter, Meter, functions_of
from collector.daemon.buffer import AsyncBuffer
from collector.daemon.calibration import Reading
from collector.daemon.delivery import Loops
from collector.daemon.records import QUALITIES, Row
from collector.uplink import keys
from collector.uplink.keys import AES_KEY_BYTES, read_key_file
from collector.uplink.messages import Common, FunctionValue, MeterRecord
from collector.uplink.session import Backoff, Pending, Settings, Status, run_forever

log = logging.getLogger(__name__)

BATCH = 100  #: periods per round of continuous packets
RECONNECT_BASE = 1.0  #: seconds before the first reconnect, doubling (jittered, × 0.5-1.5) to the cap
RECONNECT_CAP = 60.0  #: the cap: one period (data comes once a period), at least 5 s, at most this
BAD = QUALITIES.index("bad")


def grace(period: float) -> float:
    """Seconds after a period's end before it closes: the boundary slot's polls are stored by then."""
    return min(10.0, max(1.0, period / 20))


def period_end(slot: float, period: float) -> int:
    """The end of the period (end - period, end] that holds ``slot``."""
    return int(math.ceil(slot / period - 1e-9) * period)


class KeyFileError(RuntimeError):
    """A data-centre key file cannot be used (the message names the file, never its bytes)."""


def read_key(path: str, what: str, length: int | None) -> bytes:
    try:
        return read_key_file(path, length)
    except keys.KeyFileError as exc:
        raise KeyFileError(f"datacenter.{what}: {exc}") from None


def settings(cfg: Datacenter) -> Settings:
    """Session settings with the keys read from their files now (start and reload)."""
    login_key = read_key(cfg.key_file, "key_file", None if cfg.aes_key_file else AES_KEY_BYTES)
    aes_key = read_key(cfg.aes_key_file, "aes_key_file", AES_KEY_BYTES) if cfg.aes_key_file else login_key
    return Settings(
        Common(cfg.building_id, cfg.gateway_id),
        login_key,
        aes_key,
        cfg.variant,
        heartbeat=cfg.heartbeat,
        batch=BATCH,
    )


class OutboxReports:
    """The ``ReportSource`` over the buffer."""

    def __init__(
        self,
        buffer: AsyncBuffer,
        config: Config,
        period: float,
        read_now: Callable[[list[str]], Awaitable[list[Reading]]],
        continued: Callable[[list[Reading]], list[Reading]] = lambda rs: rs,
    ) -> None:
        self.buffer = buffer
        self.config = config
        self.configured_period = period
        self.period = period  #: seconds; the platform may change it (``config``/``period``)
        self.read_now = read_now
        self.continued = continued
        self.changed = asyncio.Event()  #: the period changed: the clock computes its next close again
        self._numbers = {m.id: m.datacenter_id or str(n) for n, m in enumerate(config.meters, start=1)}
        self._functions = {m.id: functions_of(m) for m in config.meters}
        #: the meters reported: those with a category (config.py warns of the others)
        self._meters = {m.id: m for m in config.meters if m.category is not None}
        self._seqs: dict[int, list[int]] = {}  #: a handed-out period's end -> the seqs of its rows

    def closed_end(self, now: float | None = None) -> int:
        """The end of the newest closed period."""
        now = time.time() if now is None else now
        p = self.period
        return int(math.floor((now - grace(p)) / p) * p)

    # -- ReportSource --------------------------------------------------------------------------

    async def pending(self, limit: int) -> Sequence[Pending]:
        newest = self.closed_end()
        periods = await self.buffer.datacenter_periods(newest, int(self.period), limit)
        items: list[Pending] = []
        for end, rows, sent in periods:
            meters = self.records(rows)
            seqs = [r.seq for r in rows]
            if not meters:  # only meters no longer in the config: nobody to report them for
                await self.buffer.datacenter_done(end, seqs)
                continue
            self._seqs[end] = seqs
            items.append(Pending(end, datetime.fromtimestamp(end), meters, resend=sent or end < newest))
        await self.buffer.datacenter_sent([i.key for i in items])
        return items

    async def acknowledged(self, item: Pending) -> None:
        await self.buffer.datacenter_done(item.key, self._seqs.pop(item.key, []))

    async def collect_now(self) -> tuple[MeterRecord, ...]:
        readings = self.continued(await self.read_now(list(self._meters)))
        return tuple(self._record(self._meters[r.meter], r.values, r.errors) for r in readings)

    async def period_changed(self, minutes: int) -> None:
        seconds = minutes * 60.0
        if minutes <= 0 or 86400 % seconds:
            log.warning("data centre asked for a report period of %d min: not a divisor of a day, ignored", minutes)
            return
        if seconds != self.period:
            log.warning(
                "data centre set the report period to %d min (the config says %g s): applied until the next "
                "reload or restart",
                minutes,
                self.configured_period,
            )
            self.period = seconds
            self.changed.set()

    # -- values --------------------------------------------------------------------------------

    def records(self, rows: list[Row]) -> tuple[MeterRecord, ...]:
        """One record per configured meter with a reading among ``rows``: its last reading with values
        (else its last), in config order."""
        best: dict[str, Row] = {}
        for row in rows:
            if row.meter is None or row.meter not in self._meters:
                continue
            kept = best.get(row.meter)
            if kept is None or _rank(row) >= _rank(kept):
                best[row.meter] = row
        out = []
        for m in self._meters.values():
            chosen = best.get(m.id)
            if chosen is not None:
                out.append(self._record(m, chosen.values or {}, (chosen.extra or {}).get("errors") or {}))
        return tuple(out)

    def _record(self, meter: Meter, values: dict[str, float], errors: dict[str, str]) -> MeterRecord:
        coding = meter.category or ""  # always set: meters without one are not reported
        functions = []
        for point, fid in self._functions[meter.id].items():
            value = values.get(point)
            ok = value is not None and math.isfinite(value) and point not in errors
            functions.append(FunctionValue(fid, coding, value if ok else None))
        return MeterRecord(self._numbers[meter.id], tuple(functions), name=meter.id)

    # -- the period clock ----------------------------------------------------------------------

    async def clock(self, wake: asyncio.Event) -> None:
        """At each period's close: compact the closed periods, then wake the session."""
        while True:
            p = self.period
            now = time.time()
            close = self.closed_end(now) + p + grace(p)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, close - now))
                continue  # the period changed: compute the next close again
            if time.time() < close - 0.5:
                continue  # woken early (the clock stepped back): wait again
            kept_out = await self.buffer.datacenter_compact(self.closed_end(), int(self.period))
            if kept_out:
                log.debug("data centre: %d reading(s) superseded by their period's last", kept_out)
            wake.set()


def _rank(row: Row) -> tuple[bool, int, int]:
    return (row.quality != BAD, row.slot or 0, row.seq)


class Uplink:
    """The data-centre northbound of one daemon: the session and the period clock, as loops for the
    supervisor, and what health shows of them."""

    def __init__(
        self,
        cfg: Datacenter,
        config: Config,
        buffer: AsyncBuffer,
        read_now: Callable[[list[str]], Awaitable[list[Reading]]],
        continued: Callable[[list[Reading]], list[Reading]] = lambda rs: rs,
    ) -> None:
        self.cfg = cfg
        self.settings = settings(cfg)  # reads the keys: a missing or short key stops the start
        self.status = Status()
        self.wake = asyncio.Event()
        self.reports = OutboxReports(buffer, config, cfg.period, read_now, continued)
        self.backoff = Backoff(RECONNECT_BASE, min(RECONNECT_CAP, max(5.0, cfg.period)))

    def loops(self) -> Loops:
        return {"datacenter": self.run, "datacenter-periods": self.periods}

    async def run(self) -> None:
        await run_forever(
            self.cfg.host, self.cfg.port, self.settings, self.reports, self.wake, self.status, self.backoff
        )

    async def periods(self) -> None:
        await self.reports.clock(self.wake)

    @property
    def online(self) -> bool:
        return self.status.state.value == "online"

    def describe(self) -> str:
        """For the status line: "online", or the state and why."""
        s = self.status
        if self.online:
            return "online"
        return f"{s.state.value}: {s.last_error}" if s.last_error else s.state.value

    def payload(self, stats: dict[str, Any]) -> dict[str, Any]:
        s = self.status
        offset = s.clock_offset
        return {
            "url": self.cfg.url,
            "state": s.state.value,
            **({"last_error": s.last_error} if s.last_error else {}),
            "clock_offset_s": round(offset.total_seconds(), 1) if offset is not None else None,
            **({"crc_form": s.crc_form} if s.crc_form else {}),
            "sent": s.sent,
            "acked": s.acked,
            "period_s": self.reports.period,
            "pending_rows": stats.get("datacenter_depth"),
            "oldest_pending_age_s": stats.get("datacenter_oldest_age_s"),
        }
