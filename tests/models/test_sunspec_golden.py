"""SunSpec golden cases: the register image an inverter holds -> discovery -> the values.

A SunSpec inverter has no map in its model file: the daemon finds "SunS", walks the model chain and
builds the points from the SunSpec definitions. test_golden.py reads a fixed map, so these cases are
run here, through the same functions the Modbus reader calls (sunspec.discover, read_common,
build_model, then read_device), fed directly with the case's registers: no server, no wire. A read
outside the image is exception 2, as on a real device, so the bases 40000, 0 and 50000 are tried in
turn.

Each case folder under cases/sunspec-inverter/ holds registers.json (as in test_golden.py),
source.txt, and expected.json: the chain discovery must find ([model id, address of its ID register,
L]), the model-1 strings, the values and the points that must have no value.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers.modbus import sunspec
from drivers.modbus.device import read_device
from drivers.model import Model
from drivers.reading import DeviceRead
from tests.models.test_golden import CASES_DIR, CapturedRegisters, case_params

CASES = sorted(p for m in ("sunspec-inverter", "sunspec-meter") for p in (CASES_DIR / m).glob("*") if p.is_dir())


def discover_and_read(
    registers: CapturedRegisters, names: list[str]
) -> tuple[list[sunspec.Block], dict[str, str], Model, DeviceRead]:
    async def go() -> tuple[list[sunspec.Block], dict[str, str], Model, DeviceRead]:
        blocks = await sunspec.discover(registers, 1)
        common = await sunspec.read_common(registers, 1, blocks)
        model = sunspec.build_model(blocks, common)
        assert [n for n in names if not model.has(n)] == [], "points the discovered model does not offer"
        return blocks, common, model, await read_device(registers, 1, model, names, gap=0)

    return asyncio.run(go())


def test_there_are_sunspec_cases() -> None:
    assert CASES


@pytest.mark.parametrize("case", case_params(CASES))
def test_discovers_and_decodes_the_register_image(case: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    registers = CapturedRegisters(json.loads((case / "registers.json").read_text()))
    names = list(expected["values"]) + list(expected["errors"]) + list(expected.get("absent", []))
    blocks, common, model, result = discover_and_read(registers, names)
    assert [[b.model_id, b.address, b.length] for b in blocks] == expected["chain"]
    assert {k: common.get(k) for k in expected["common"]} == expected["common"]
    assert (model.vendor, model.model) == (expected["common"]["Mn"], expected["common"]["Md"])
    assert result.values == pytest.approx(expected["values"], rel=1e-6)
    assert sorted(result.errors) == expected["errors"]
    assert sorted(result.absent) == expected.get("absent", [])


@pytest.mark.parametrize(
    ("case", "model", "kind"),
    [
        ("sunspec-meter/hand-built-203-wye", "sunspec-meter", "electricity"),
        ("sunspec-inverter/hand-built-113-float", "sunspec-inverter", "pv"),
    ],
)
def test_scan_names_a_sunspec_meter_apart_from_an_inverter(case: str, model: str, kind: str) -> None:
    from collector.cli.scan import identify

    registers = CapturedRegisters(json.loads((CASES_DIR / case / "registers.json").read_text()))
    found = asyncio.run(identify(registers, 1))  # type: ignore[arg-type]
    assert found.model == model
    _, _, built, _ = discover_and_read(registers, [])
    assert built.kind == kind
