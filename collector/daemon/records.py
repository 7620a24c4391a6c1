"""What travels through the daemon, as typed records (docs/architecture.md, "The record flow").

A poll gives a ``calibration.Reading``; the writer stores it as a ``Record``, with the ``Interval``
consumption and the ``Event`` s the counters and the health checks derive; the buffer gives each a
``seq`` and hands back a ``Row``; ``payloads.message`` turns a row into a topic and JSON payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KIND_READING, KIND_EVENT, KIND_INTERVAL = 0, 1, 2
QUALITIES = ("good", "partial", "bad")


@dataclass(slots=True)
class Record:
    """A reading to store: what the poll produced, before it has a seq."""

    meter: str
    slot: datetime
    ts: datetime
    values: dict[str, float]
    quality: str = "good"
    errors: dict[str, str] = field(default_factory=dict)
    synced: bool = True  #: False: taken while the wall clock was not synchronised


@dataclass(slots=True, frozen=True)
class Event:
    """Something the platform must hear of (docs/platform-contract.md, "Events"): ``name`` is the
    payload's ``event``, ``detail`` its other fields, in order."""

    name: str
    meter: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The event's fields as stored and published (without the envelope: v, gateway, seq, ts)."""
        out: dict[str, Any] = {"event": self.name}
        if self.meter is not None:
            out["meter"] = self.meter
        out.update(self.detail)
        return out


@dataclass(slots=True, frozen=True)
class Interval:
    """The consumption of one counter over one wall-clock interval (docs/calibration.md)."""

    meter: str
    point: str
    start: float  #: unix seconds
    end: float
    delta: float
    unit: str
    quality: str  #: measured, estimated or outage

    def body(self) -> dict[str, Any]:
        """As stored in the buffer's ``extra`` column (the meter has a column of its own)."""
        return {
            "point": self.point,
            "start": self.start,
            "end": self.end,
            "delta": self.delta,
            "unit": self.unit,
            "quality": self.quality,
        }


@dataclass(slots=True)
class Row:
    """A stored message, as the publisher sees it."""

    seq: int
    kind: int
    meter: str | None
    slot: int | None  #: unix seconds
    ts_ms: int
    quality: int
    values: dict[str, float] | None
    extra: dict[str, Any] | None
