"""One state vocabulary: vendor state codes -> SunSpec's St numbers, the raw code beside them."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from collector.simulator.meters import SimulatedMeter
from drivers import registry
from drivers.modbus.device import decode, read_device
from drivers.modbus.planner import plan
from drivers.model import DataType, Function, Model, Point
from drivers.quantities import INVERTER_STATES, QUANTITIES, Nature
from drivers.reading import DeviceRead
from tests.model_parts import acme_model, acme_problems


def load(tmp_path: Path, points: str) -> Model:
    return acme_model(tmp_path, points)


def problems(tmp_path: Path, points: str) -> str:
    return acme_problems(tmp_path, points)


def test_the_vocabulary_is_sunspec_st() -> None:
    assert INVERTER_STATES == {
        "off": 1, "sleeping": 2, "starting": 3, "mppt": 4,
        "throttled": 5, "shutting_down": 6, "fault": 7, "standby": 8,
    }  # fmt: skip
    assert QUANTITIES["inverter_state_code"].nature is Nature.STATE and QUANTITIES["inverter_state_code"].unit == "-"


def test_a_states_table_loads_as_canonical_numbers(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        "  - {name: inverter_state, address: 0, states: {0: standby, 1: mppt, 0x5500: fault}}\n"
        "  - {name: inverter_state_code, address: 0}\n",
    )
    assert m.point("inverter_state").states == ((0, 8), (1, 4), (0x5500, 7))
    assert m.point("inverter_state_code").states == ()


def test_a_bad_states_table_is_located(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        "  - name: inverter_state\n"  # line 8
        "    address: 0\n"
        "    states:\n"
        "      0: standby\n"
        "      1: running\n"  # line 12
        "      x1: fault\n"  # line 13
        "      70000: fault\n"  # line 14
        "      2: off\n"  # line 15: YAML reads off as false
        "  - {name: dc_power, address: 1, unit: W, states: {0: mppt}}\n",  # line 16
    )
    path = tmp_path / "acme-pv1.yaml"
    assert f'{path}:12 points[0] "inverter_state": states.1: "running" is not a state (off, sleeping' in text
    assert f'{path}:13 points[0] "inverter_state": states.x1: "x1" is not a 16-bit state code' in text
    assert f'{path}:14 points[0] "inverter_state": states.70000: "70000" is not a 16-bit state code' in text
    assert f'{path}:15 points[0] "inverter_state": states.2: false (a boolean) is not a state' in text
    assert 'quote "off"' in text
    assert f'{path}:16 points[1] "dc_power": states: only inverter_state has a state vocabulary' in text


def test_only_a_state_point_and_its_raw_code_may_share_a_register(tmp_path: Path) -> None:
    twin = "  - {name: inverter_state, address: 0, states: {0: standby}}\n  - {name: inverter_state_code, address: 0}\n"
    assert len(load(tmp_path, twin).points) == 2
    third = problems(tmp_path, twin + "  - {name: status_copy, address: 0}\n")
    assert (
        'points.status_copy.address: registers 0..0 overlap "inverter_state_code" (0..0) '
        "(only a point with states: and one point for its raw code may share them)"
    ) in third
    plain = problems(tmp_path, "  - {name: a_state, address: 0}\n  - {name: b_state, address: 0}\n")
    assert 'registers 0..0 overlap "a_state"' in plain
    wider = problems(
        tmp_path,
        "  - {name: inverter_state, address: 0, states: {0: standby}}\n"
        "  - {name: inverter_state_code, address: 0, type: uint32}\n",
    )
    assert "overlap" in wider


STATE = Point(
    "inverter_state", 5037, DataType.UINT16, Function.INPUT, nature=Nature.STATE, states=((0, 4), (0x5500, 7))
)
CODE = Point("inverter_state_code", 5037, DataType.UINT16, Function.INPUT, nature=Nature.STATE)
NEXT = Point("frequency", 5038, DataType.UINT16, Function.INPUT, scale=0.1, unit="Hz")
TWINS = Model(name="t-pv", vendor="t", model="pv", kind="pv", protocol="modbus", manual="t", points=(CODE, STATE, NEXT))


def test_the_planner_reads_two_points_at_one_address_once() -> None:
    (req,) = plan(TWINS, [STATE, CODE, NEXT], gap=0)
    assert (req.address, req.count) == (5037, 2)
    assert sorted((p.name, offset) for p, offset in req.points) == [
        ("frequency", 1), ("inverter_state", 0), ("inverter_state_code", 0),
    ]  # fmt: skip
    assert [(r.address, r.count) for r in plan(TWINS, [STATE, CODE], gap=0)] == [(5037, 1)]


@pytest.mark.parametrize(
    ("word", "values", "errors"),
    [
        (0x0000, {"inverter_state": 4, "inverter_state_code": 0, "frequency": 50.0}, {}),
        (0x5500, {"inverter_state": 7, "inverter_state_code": 0x5500, "frequency": 50.0}, {}),
        (
            0x1234,
            {"inverter_state_code": 0x1234, "frequency": 50.0},
            {"inverter_state": "state code 0x1234 is not in the model's table"},
        ),
    ],
)
def test_decode_publishes_the_canonical_state_and_the_code(
    word: int, values: dict[str, float], errors: dict[str, str]
) -> None:
    requests = plan(TWINS, [STATE, CODE, NEXT], gap=0)
    out = DeviceRead()
    decode(requests, [struct.pack(">2H", word, 500)], out)  # the reply's register bytes
    assert out.values == values and out.errors == errors
    assert out.raw["inverter_state"] == word  # `read --raw` shows what the register held


class Words:
    def __init__(self, words: dict[int, int]) -> None:
        self.words = words

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        return [self.words[a] for a in range(address, address + count)]


@pytest.mark.parametrize("name", ["growatt-tl", "sungrow-sg"])
@pytest.mark.parametrize("hour", [3, 12])  # night (sleeping: no such code, standby instead) and noon (mppt)
def test_the_simulator_serves_a_code_of_the_table(name: str, hour: int) -> None:
    model = registry.load(name)
    meter = SimulatedMeter(model, 1, clock=86400.0 * 20_000 + 3600 * hour)
    state = model.point("inverter_state")
    image = meter.image(meter.now())[state.function.code]
    assert image[state.address] in {code for code, _ in state.states}
    words = Words(image)
    r = asyncio.run(read_device(words, 1, model, ["inverter_state", "inverter_state_code"], gap=0))
    assert r.errors == {}
    assert r.values["inverter_state"] == (INVERTER_STATES["mppt"] if hour == 12 else INVERTER_STATES["standby"])
    assert r.values["inverter_state_code"] == image[state.address]
