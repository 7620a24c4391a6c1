"""Health: per-bus and per-meter counts, availability logged once per change, events to publish.

Availability is logged when it changes, never every poll (Home Assistant's modbus habit): one
WARNING when a meter stops answering, one INFO when it is back, and an event on ``{root}/events``
for each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector.daemon.records import Event

log = logging.getLogger("collector.daemon.health")


@dataclass
class MeterHealth:
    polls: int = 0
    good: int = 0
    partial: int = 0
    failed: int = 0
    skipped_overlap: int = 0  #: a slot came while the previous poll was still queued or running
    skipped_backoff: int = 0  #: slots not polled while a dead meter backs off
    down_since: float | None = None  #: wall-clock seconds
    last_good: float | None = None  #: wall-clock seconds of the last reading with values
    last_error: str = ""


@dataclass
class BusHealth:
    transactions: int = 0
    timeouts: int = 0
    garbled: int = 0  #: of the timeouts, those that heard bytes but no reply (noise, baud rate, a second master)
    busy_s: float = 0.0


@dataclass
class Health:
    emit: Callable[[Event], None]
    meters: dict[str, MeterHealth] = field(default_factory=dict)
    buses: dict[str, BusHealth] = field(default_factory=dict)
    missed_slots: int = 0
    clock_steps: int = 0

    def meter(self, meter_id: str) -> MeterHealth:
        return self.meters.setdefault(meter_id, MeterHealth())

    def mark_down(self, meter_id: str, bus: str, reason: str) -> None:
        m = self.meter(meter_id)
        m.last_error = reason
        if m.down_since is None:
            m.down_since = time.time()
            log.warning('meter "%s" on bus "%s" unavailable: %s', meter_id, bus, reason)
            self.emit(Event("meter_offline", meter_id, {"bus": bus, "reason": reason}))

    def mark_up(self, meter_id: str, bus: str) -> None:
        m = self.meter(meter_id)
        m.last_good = time.time()
        if m.down_since is not None:
            down = round(time.time() - m.down_since, 1)
            m.down_since = None
            log.info('meter "%s" on bus "%s" back after %.0f s', meter_id, bus, down)
            self.emit(Event("meter_online", meter_id, {"bus": bus, "down_s": down}))

    def payload(self, buffer: dict[str, Any], publisher: dict[str, Any] | None) -> dict[str, Any]:
        """``publisher`` None: the config has no mqtt, and the payload no ``mqtt`` part."""
        body: dict[str, Any] = {
            "buffer": {
                "depth": buffer.get("depth"),
                "oldest_unsent_age_s": buffer.get("oldest_unsent_age_s"),
                "dropped_total": buffer.get("dropped_total"),
                "bytes": buffer.get("file_bytes"),
            },
            "mqtt": publisher,
            "buses": {
                name: {
                    "transactions": b.transactions,
                    "timeouts": b.timeouts,
                    "garbled": b.garbled,
                    "busy_s": round(b.busy_s, 3),
                }
                for name, b in self.buses.items()
            },
            "meters": {
                name: {
                    "polls": m.polls,
                    "good": m.good,
                    "partial": m.partial,
                    "failed": m.failed,
                    "skipped_overlap": m.skipped_overlap,
                    "skipped_backoff": m.skipped_backoff,
                    "online": m.down_since is None,
                    **({"offline_since": iso_seconds(m.down_since)} if m.down_since is not None else {}),
                    **({"last_good": iso_seconds(m.last_good)} if m.last_good is not None else {}),
                    **({"last_error": m.last_error} if m.last_error else {}),
                }
                for name, m in self.meters.items()
            },
            "missed_slots": self.missed_slots,
            "clock_steps": self.clock_steps,
        }
        if publisher is None:
            del body["mqtt"]
        return body


def iso_seconds(ts: float) -> str:
    """Unix seconds as UTC ISO 8601 to the second: 2026-12-02T04:55:22Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
