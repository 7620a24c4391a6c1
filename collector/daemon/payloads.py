"""The MQTT contract (docs/design.md §6, docs/platform-contract.md): topics and payloads, in one place."""

from __future__ import annotations

import json
import time
from typing import Any

from collector import __version__
from collector.config import Config, Meter
from collector.daemon.buffer import finite, ms_iso, seconds_iso
from collector.daemon.records import KIND_EVENT, KIND_INTERVAL, KIND_READING, QUALITIES, Row
from drivers.model import Model

PAYLOAD_VERSION = 1


class Topics:
    def __init__(self, prefix: str, gateway: str) -> None:
        self.root = f"{prefix}/{gateway}" if prefix else gateway
        self.status = f"{self.root}/status"
        self.health = f"{self.root}/health"
        self.events = f"{self.root}/events"

    def reading(self, meter: str) -> str:
        return f"{self.root}/meters/{meter}/reading"

    def meta(self, meter: str) -> str:
        return f"{self.root}/meters/{meter}/meta"

    def interval(self, meter: str) -> str:
        return f"{self.root}/meters/{meter}/interval"


def now_iso() -> str:
    return ms_iso(int(time.time() * 1000))


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def message(row: Row, gateway: str, topics: Topics) -> tuple[str, bytes]:
    """The topic and payload of a buffered row."""
    if row.kind == KIND_READING:
        assert row.meter is not None and row.values is not None and row.slot is not None
        body: dict[str, Any] = {
            "v": PAYLOAD_VERSION,
            "gateway": gateway,
            "meter": row.meter,
            "seq": row.seq,
            "ts": ms_iso(row.ts_ms),
            "slot": seconds_iso(row.slot),
            "quality": QUALITIES[row.quality],
            "values": finite(row.values),
        }
        if row.extra:
            body.update(row.extra)
        return topics.reading(row.meter), dumps(body)
    if row.kind == KIND_INTERVAL:
        assert row.meter is not None and row.extra is not None
        iv = row.extra
        body = {
            "v": PAYLOAD_VERSION,
            "gateway": gateway,
            "meter": row.meter,
            "seq": row.seq,
            "point": iv["point"],
            "start": seconds_iso(int(iv["start"])),
            "end": seconds_iso(int(iv["end"])),
            "delta": iv["delta"],
            "unit": iv["unit"],
            "quality": iv["quality"],
        }
        return topics.interval(row.meter), dumps(body)
    assert row.kind == KIND_EVENT and row.extra is not None
    event = {"v": PAYLOAD_VERSION, "gateway": gateway, "seq": row.seq, "ts": ms_iso(row.ts_ms), **row.extra}
    return topics.events, dumps(event)


def status(state: str) -> bytes:
    return dumps({"state": state, "ts": now_iso(), "version": __version__})


def meta(config: Config, meter: Meter, model: Model | None = None, absent: dict[str, str] | None = None) -> bytes:
    """``model``: the discovered one, for a SunSpec inverter (its points are known after the first read);
    ``absent``: points the meter said it does not have (never in ``points``, never in a reading)."""
    model = model or meter.model
    cal = meter.calibration
    absent = absent or {}
    names = [n for n in meter.points if model.has(n)] or [p.name for p in model.published]
    names = [n for n in names if n not in absent]
    points = {name: {"unit": model.point(name).unit, "nature": model.point(name).nature.value} for name in names}
    body: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "gateway": config.gateway.id,
        "meter": meter.id,
        "ts": now_iso(),
        "model": model.name,
        "vendor": model.vendor,
        "model_name": model.model,
        "kind": model.kind,
        "protocol": model.protocol,
        "category": meter.category,
        "category_name": config.categories.get(meter.category or "") if meter.category else None,
        "bus": meter.bus,
        "address": meter.address,
        "interval_s": meter.interval,
        "points": points,
        "absent": dict(absent),
        "calibration": {
            "ct_ratio": cal.ct_ratio,
            "pt_ratio": cal.pt_ratio,
            "points": {n: {"scale": c.scale, "offset": c.offset} for n, c in cal.points.items()},
        },
    }
    if config.gateway.site:
        body["site"] = config.gateway.site
    if config.gateway.building:
        body["building"] = config.gateway.building
    return dumps(body)
