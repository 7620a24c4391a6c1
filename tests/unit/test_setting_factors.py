"""A value counted in the unit and multiplier a meter's setting registers say (TUF-2000M's totaliser):
``factors`` on the setting, ``scale_by`` on the value; a code the model does not know refuses the value."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.simulator.meters import SimulatedMeter
from drivers import registry
from drivers.modbus.device import read_device
from drivers.model import Function, Model
from tests.model_parts import acme_model, acme_problems


def load(tmp_path: Path, points: str) -> Model:
    return acme_model(tmp_path, points, model="W1", kind="water", function="holding")


def problems(tmp_path: Path, points: str) -> str:
    return acme_problems(tmp_path, points, model="W1", kind="water", function="holding")


class Words:
    def __init__(self, words: dict[int, int]) -> None:
        self.words = words

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        return [self.words.get(address + i, 0) for i in range(count)]


def test_a_bad_factors_table_or_reference_is_located(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        "  - {name: volume, address: 0, unit: m³, scale_by: [unit_code, nowhere, plain]}\n"
        "  - {name: unit_code, address: 5, factors: {0: 1, 1: -2, x: 3}}\n"
        "  - {name: plain, address: 6}\n"
        "  - {name: float_code, address: 8, type: float32, factors: {0: 1}}\n",
    )
    assert "acme-w1.yaml:8 points" in text and 'unknown point "nowhere"' in text
    assert '"plain" has no factors: table' in text
    assert "factors.1: must be a multiplier above 0, not -2" in text
    assert '"x" is not a code' in text
    assert "float32 is not an integer type" in text


def test_the_value_follows_the_setting_and_an_unknown_code_is_refused_with_its_register(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        "  - {name: volume, address: 0, unit: m³, scale_by: [unit_code, multiplier]}\n"
        "  - {name: unit_code, address: 10, factors: {0: 1, 1: 0.001}, publish: false}\n"
        "  - {name: multiplier, address: 11, factors: {0: 0.001, 3: 1, 4: 10}, publish: false}\n",
    )
    assert [p.name for p in m.needed_for(["volume"])] == ["volume", "unit_code", "multiplier"]
    assert m.point("volume").span is None  # the wrap moves with the multiplier: no fixed span

    def read(unit_code: int, multiplier: int) -> tuple[dict[str, float], dict[str, str]]:
        r = asyncio.run(read_device(Words({0: 1234, 10: unit_code, 11: multiplier}), 1, m, ["volume"], gap=0))
        return r.values, r.errors

    assert read(0, 3) == ({"volume": 1234.0}, {})
    assert read(1, 4) == ({"volume": 12.34}, {})
    values, errors = read(2, 3)
    assert values == {}
    assert errors["volume"].startswith("unit_code = 2 (register 10) is not a code the model knows (0, 1)")


def test_the_tuf_2000m_reads_its_totaliser_unit_and_multiplier_from_the_meter() -> None:
    m = registry.load("tuf-2000m")
    assert {p.name for p in m.needed_for(["volume"])} >= {"totaliser_unit", "totaliser_multiplier"}
    sim = SimulatedMeter(m, 1, static=True)
    sim.overrides.update({"volume": 1234.5678, "totaliser_unit": 1, "totaliser_multiplier": 4})

    class Sim:
        async def read(
            self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
        ) -> list[int]:
            words = sim.read(function.code, address, count)
            assert isinstance(words, list)
            return words

    r = asyncio.run(read_device(Sim(), 1, m, ["volume", "flow_rate"], gap=0))
    assert r.values["volume"] == pytest.approx(1234.5678)
    assert r.raw["totaliser_unit"] == 1 and r.raw.get("volume") == 123456  # litres / 10 on the wire
