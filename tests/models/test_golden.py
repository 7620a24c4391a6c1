"""Golden cases: registers as a meter holds them -> the values the platform must get.

Each case folder holds registers.json (function -> {start address: [words]}) and expected.json
(values in canonical units, before site calibration, and the points that must have no value).
The words were written from the manuals' encodings with struct, not with our encoder.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers import registry
from drivers.errors import ExceptionReply
from drivers.modbus.device import read_device
from drivers.model import Function

CASES = sorted(p for p in (Path(__file__).parent / "cases").glob("*/*") if p.is_dir())


class CapturedRegisters:
    """Answers reads from a case's register blocks; a read outside them is exception 2, as a meter does."""

    def __init__(self, blocks: dict[str, dict[str, list[int]]]) -> None:
        self.words: dict[tuple[Function, int], int] = {}
        for fn, starts in blocks.items():
            if fn == "note":
                continue
            for start, words in starts.items():
                for i, w in enumerate(words):
                    self.words[(Function(fn), int(start) + i)] = w

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        try:
            return [self.words[(function, a)] for a in range(address, address + count)]
        except KeyError:
            raise ExceptionReply(2, f"registers {address}+{count} not captured") from None


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_decodes_captured_registers(case: Path) -> None:
    model = registry.load(case.parent.name)
    registers = json.loads((case / "registers.json").read_text())
    expected = json.loads((case / "expected.json").read_text())
    names = list(expected["values"]) + list(expected["errors"])
    result = asyncio.run(read_device(CapturedRegisters(registers), 1, model, names, gap=0))
    assert result.values == pytest.approx(expected["values"], rel=1e-6)
    assert sorted(result.errors) == expected["errors"]
