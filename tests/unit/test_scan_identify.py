"""scan names the model a meter is: each built-in Modbus model, simulated, is told apart from the
others by its probe and the plausible values it gives."""

from __future__ import annotations

import asyncio

import pytest

from collector.cli.scan import identify
from collector.simulator.meters import SimulatedMeter
from drivers import registry
from drivers.errors import ExceptionReply
from drivers.model import Function

MODBUS = [n for n in registry.names() if registry.load(n).protocol == "modbus" and registry.load(n).probe]
#: same registers for everything scan can read without a serial number: named as the first
LOOK_ALIKE = {"eastron-sdm72v2": "eastron-sdm630"}


class Answers:
    def __init__(self, meter: SimulatedMeter) -> None:
        self.meter = meter

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        words = self.meter.read(function.code, address, count)
        if isinstance(words, int):
            raise ExceptionReply(words, f"exception {words}")
        return words


def scanned(meter: SimulatedMeter) -> str | None:
    return asyncio.run(identify(Answers(meter), 1)).model  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MODBUS)
def test_each_model_is_named_as_itself(name: str) -> None:
    assert scanned(SimulatedMeter(registry.load(name), 1, static=True)) == LOOK_ALIKE.get(name, name)


def test_a_single_phase_inverter_with_unused_phases_at_zero_is_still_named() -> None:
    meter = SimulatedMeter(registry.load("huawei-sun2000"), 1, static=True)
    meter.overrides.update({"voltage_l2": 0.0, "voltage_l3": 0.0, "current_l2": 0.0, "current_l3": 0.0})
    assert scanned(meter) == "huawei-sun2000"
