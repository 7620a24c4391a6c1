"""Invariants over every built-in model, and located errors for a broken one."""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path

import pytest

from drivers import registry
from drivers.model import MAX_REQUEST_REGISTERS, load_model
from drivers.quantities import INVERTER_STATES, QUANTITIES, UNIT_CONVERSIONS
from drivers.source import ProblemsError

NAMES = registry.names()

#: Every state code each vendor's source documents for its inverter_state register, written out from
#: the sources (the model files cite them) so that a code dropped from a table is caught.
DOCUMENTED_STATE_CODES = {
    # OpenInverterGateway Growatt120.cpp @ ad247df0: 0 waiting, 1 normal, 3 fault; Ardexa notes: 2 fault
    "growatt-tl": {0, 1, 2, 3},
    # SunGather registers-sungrow.yaml @ 2c2935d7, work_state_1 (doc 5038)
    "sungrow-sg": {0x0000, 0x8000, 0x1300, 0x1500, 0x1400, 0x1200, 0x1600, 0x9100, 0x8100, 0x8200, 0x5500, 0x2500},
    # huawei-solar-lib register_values.py DEVICE_STATUS_DEFINITIONS (32089)
    "huawei-sun2000": {
        0x0000,
        0x0001,
        0x0002,
        0x0003,
        0x0100,
        0x0200,
        0x0201,
        0x0202,
        0x0203,
        0x0300,
        0x0301,
        0x0302,
        0x0303,
        0x0304,
        0x0305,
        0x0306,
        0x0307,
        0x0308,
        0x0401,
        0x0402,
        0x0403,
        0x0404,
        0x0405,
        0x0500,
        0x0501,
        0x0600,
        0x0700,
        0x0800,
        0x0900,
        0x0A00,
        0xA000,
    },
}

#: a meter's power and energy units -> what the platform gets (drivers/quantities.py), written out here
#: rather than taken from UNIT_CONVERSIONS, so that a wrong entry there is caught
PLATFORM_UNIT = {"W": "kW", "kW": "kW", "MW": "kW", "Wh": "kWh", "kWh": "kWh", "MWh": "kWh"}


def test_the_registry_has_the_models_the_issue_asks_for() -> None:
    assert {"eastron-sdm630", "eastron-sdm120", "chint-dtsu666"} <= set(NAMES)
    assert any(registry.load(n).kind == "water" for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_model_invariants(name: str) -> None:
    m = registry.load(name)
    assert m.name == name == Path(m.path).stem
    assert m.manual.strip(), "every model cites the manual it was written from"
    assert 1 <= m.max_registers <= MAX_REQUEST_REGISTERS
    assert len({p.name for p in m.points}) == len(m.points), "unique point names"
    modbus = m.protocol in ("modbus", "sunspec")
    if m.protocol == "sunspec":
        assert not m.points  # discovered, not written
    for p in m.points:
        assert p.address >= 0 and (p.end <= 0x10000 if modbus else p.address <= 0xFFFFFFFF)
        if m.protocol == "dlt645":
            assert p.dlt645 is not None and p.dlt645.digits in (2, 4, 6, 8) and 0 <= p.dlt645.decimals < p.dlt645.digits
        q = QUANTITIES.get(p.name)
        if q is not None:
            assert p.unit == q.unit and p.nature == q.nature
        elif p.publish:
            # A qualified variant of a canonical name (energy_import_t1, dc_power_2) keeps its unit ...
            base = next((c for c in QUANTITIES if p.name.startswith(c + "_")), None)
            if base is not None:
                assert p.unit == QUANTITIES[base].unit, f"{p.name} must be in {QUANTITIES[base].unit} like {base}"
            else:
                # ... anything else must not be a near miss of a canonical one (voltage_1 for voltage_l1).
                close = difflib.get_close_matches(p.name, QUANTITIES, n=1, cutoff=0.85)
                assert not close, f"{p.name} looks like canonical {close}"
        assert p.unit in {u for u, _ in UNIT_CONVERSIONS.values()}
        # Every "not available" marker is a bit pattern of the point's own width, never a float's value.
        bits = 16 * p.type.registers
        assert all(0 <= marker < 2**bits for marker in p.invalid), f"{p.name}: a marker wider than {p.type.value}"
    by_fn = sorted(m.points, key=lambda p: (p.function.value, p.address)) if modbus else []
    for a, b in itertools.pairwise(by_fn):
        twins = {a.name, b.name} == {"inverter_state", "inverter_state_code"} and a.address == b.address
        assert a.function is not b.function or a.end <= b.address or twins, f"{a.name} overlaps {b.name}"
    # One state vocabulary: a Modbus model maps its vendor's codes, every code its source documents.
    if m.protocol == "modbus" and m.has("inverter_state") and m.point("inverter_state").publish:
        state = m.point("inverter_state")
        assert {code for code, _ in state.states} == DOCUMENTED_STATE_CODES[name], "states: must cover the source"
        assert {canonical for _, canonical in state.states} <= set(INVERTER_STATES.values())
        code = m.point("inverter_state_code")
        assert (code.address, code.type, code.function, code.states) == (state.address, state.type, state.function, ())
    if m.probe:
        assert m.has(m.probe)
    # Whatever the meter counts power and energy in (W, Wh, MWh ...), the platform always gets kW and kWh.
    wrong = [
        f"{p.name}: {p.meter_unit} -> {p.unit}" for p in m.points if PLATFORM_UNIT.get(p.meter_unit, p.unit) != p.unit
    ]
    assert not wrong, f"the platform always gets kW and kWh: {wrong}"


def test_the_source_unit_is_converted_to_kw(tmp_path: Path) -> None:
    m = registry.load("eastron-sdm630")
    assert m.point("active_power").meter_unit == "W" and m.point("active_power").scale == pytest.approx(0.001)


BROKEN = """\
vendor: Acme
model: EM1
kind: electricity
protocol: modbus
defaults: {function: input, type: float32}
points:
  - {name: voltage_l1, address: 0, unit: V}
  - {name: current_l1, address: 1, unit: A}
  - {name: active_power, address: 10, unit: kg}
  - {name: energy_import, address: 70000, unit: kWh}
  - {name: voltage_l1, address: 20, unit: V, colour: red}
  - {name: frequency, address: 30, type: int16, unit: Hz, invalid: 0x7FFFFFFF}
"""


def test_a_broken_model_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "acme-em1.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ProblemsError) as err:
        load_model(path)
    text = err.value.render()
    assert f"{path}:1 manual: is required" in text
    assert f'{path}:9 points[2] "active_power": unit: unknown unit "kg"' in text
    assert f'{path}:10 points[3] "energy_import": address: 70000 is outside 0..65535' in text
    assert f'{path}:11 points[4] "voltage_l1": colour: unknown key' in text
    assert f"{path}:11 points.voltage_l1: duplicate point name (first on line 7)" in text
    assert "overlap" in text and "current_l1" in text
    assert f'{path}:12 points[5] "frequency": invalid: a marker is wider than the point\'s int16' in text
