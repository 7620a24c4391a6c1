"""What one read of one meter gave, whatever the protocol, and the interface every protocol's reader has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from drivers.errors import TransportError
from drivers.model import Model


def tidy(value: float) -> float:
    """Drop binary noise from scaling (12840 × 0.001 = 12.840000000000002 -> 12.84)."""
    return float(f"{value:.15g}")


@dataclass(slots=True)
class DeviceRead:
    """What one read of one meter gave."""

    values: dict[str, float] = field(default_factory=dict)  #: canonical unit, uncalibrated
    raw: dict[str, int | float] = field(default_factory=dict)  #: decoded register value, unscaled
    registers: dict[str, list[int]] = field(default_factory=dict)  #: words (Modbus) or bytes (DL/T 645) as they came
    errors: dict[str, str] = field(default_factory=dict)  #: point -> why it has no value: a fault
    absent: dict[str, str] = field(default_factory=dict)  #: point -> why the meter has none, by design
    requests: int = 0
    seconds: float = 0.0
    failure: TransportError | None = None  #: set when the meter did not answer at all
    model: Model | None = None  #: the model the values follow when it is discovered (SunSpec)

    def only(self, names: list[str]) -> DeviceRead:
        """Keep values and errors of the points asked for; helpers stay in raw/registers for --raw."""
        asked = set(names)
        self.values = {k: v for k, v in self.values.items() if k in asked}
        self.errors = {k: v for k, v in self.errors.items() if k in asked}
        self.absent = {k: v for k, v in self.absent.items() if k in asked and k not in self.values}
        return self

    def lack(self, name: str, why: str) -> None:
        """The meter has no value for ``name`` by design (it said so): absent, not an error."""
        self.absent[name] = why
        self.errors.pop(name, None)


class MeterReader(Protocol):
    """One physical bus: reads one meter at a time."""

    @property
    def requests(self) -> int: ...

    @property
    def timeouts(self) -> int: ...

    @property
    def garbled(self) -> int:
        """Timed-out attempts that heard bytes but no reply: noise, a wrong baud rate or parity, a reply
        cut short, another master on the line (counted among the timeouts too)."""
        ...

    async def read_meter(
        self, address: int | str, model: Model, names: list[str], *, retries: int | None = None
    ) -> DeviceRead: ...

    def close(self) -> None: ...
