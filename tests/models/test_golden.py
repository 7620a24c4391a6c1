"""Golden cases: what a meter sends -> the values the platform must get.

Each case folder holds expected.json (values in canonical units, before site calibration, the points
that must have no value because of a fault ("errors") or because the meter says it has none
("absent"), and, for a case that shows a known bug, "xfail": the reason), source.txt
(where the numbers come from) and what the meter sent:

- registers.json for Modbus models: function -> {start address: [words]};
- frames.json for DL/T 645 and CJ/T 188 models: the meter's address and, per data identifier (hex,
  as the model file writes it), the reply frame as the meter sent it and, where the capture has it,
  the request the driver must send (both hex; wake-up FE bytes are ignored in requests).

The words and frames were copied from public captures or written by hand from the manuals'
encodings, never with our encoder or simulator. SunSpec cases need discovery and are run by
test_sunspec_golden.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers import registry
from drivers.cjt188.device import Cjt188Reader
from drivers.dlt645.device import Dlt645Reader
from drivers.errors import ExceptionReply, NoReply
from drivers.modbus.device import read_device
from drivers.model import Function, Model
from drivers.reading import DeviceRead

CASES_DIR = Path(__file__).parent / "cases"
ALL_CASES = sorted(p for p in CASES_DIR.glob("*/*") if p.is_dir())


def _protocol(case: Path) -> str:
    name = case.parent.name
    return registry.load(name).protocol if name in registry.names() else "unknown model"


def case_params(cases: list[Path]) -> list[Any]:
    """pytest params for case folders; a case whose expected.json has "xfail" must fail (strict)."""
    params = []
    for case in cases:
        expected = json.loads((case / "expected.json").read_text())
        marks = [pytest.mark.xfail(reason=expected["xfail"], strict=True)] if "xfail" in expected else []
        params.append(pytest.param(case, id=f"{case.parent.name}/{case.name}", marks=marks))
    return params


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


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _requested_di(protocol: str, request: bytes) -> int:
    """The data identifier a request asks for, read from the frame as the standards lay it out."""
    if protocol == "dlt645":  # 68 A0..A5 68 C L DATA CS 16, DATA +33H, DI low byte first
        data = bytes((b - 0x33) & 0xFF for b in request[10:-2])
        return int.from_bytes(data[: 2 if request[8] == 0x01 else 4], "little")  # 01H: 1997, 2-byte DI
    return int.from_bytes(request[11:13], "little")  # CJ/T 188: 68 T A0..A6 C L DI0 DI1 SER CS 16


class CapturedFrames:
    """A line with one meter on it that answers each request with the case's captured reply frame.

    Stands in for drivers.serialline.SerialLine (``transact``, ``requests``, ``timeouts``). A data
    identifier with no captured frame gets no answer, as a meter that does not understand it."""

    def __init__(self, protocol: str, captured: dict[str, Any]) -> None:
        self.protocol = protocol
        frames = captured["frames"]
        self.replies = {int(di, 16): _hex(f["reply"]) for di, f in frames.items()}
        self.expected = {int(di, 16): _hex(f["request"]).lstrip(b"\xfe") for di, f in frames.items() if "request" in f}
        self.requests = self.timeouts = 0

    async def transact(self, frame: bytes, take: Callable[[bytearray], Any], *, retries: int | None = None) -> Any:
        self.requests += 1
        request = frame.lstrip(b"\xfe")
        di = _requested_di(self.protocol, request)
        if di in self.expected:
            assert request.hex(" ") == self.expected[di].hex(" "), f"request for {di:X} differs from the capture"
        reply = self.replies.get(di)
        found = take(bytearray(reply)) if reply is not None else None
        if found is None:
            self.timeouts += 1
            why = "no frame captured" if reply is None else "the captured frame is no reply from this meter"
            raise NoReply(f"{why} for {di:X}")
        return found

    def close(self) -> None:
        pass


def read_case(case: Path, model: Model, names: list[str]) -> DeviceRead:
    if model.protocol == "modbus":
        registers = json.loads((case / "registers.json").read_text())
        return asyncio.run(read_device(CapturedRegisters(registers), 1, model, names, gap=0))
    captured = json.loads((case / "frames.json").read_text())
    line = CapturedFrames(model.protocol, captured)
    reader = Dlt645Reader(line) if model.protocol == "dlt645" else Cjt188Reader(line)  # type: ignore[arg-type]
    return asyncio.run(reader.read_meter(captured["address"], model, names, retries=0))


@pytest.mark.parametrize("case", case_params([c for c in ALL_CASES if _protocol(c) != "sunspec"]))
def test_decodes_captured_registers(case: Path) -> None:
    model = registry.load(case.parent.name)
    expected = json.loads((case / "expected.json").read_text())
    names = list(expected["values"]) + list(expected["errors"]) + list(expected.get("absent", []))
    result = read_case(case, model, names)
    assert result.values == pytest.approx(expected["values"], rel=1e-6)
    assert sorted(result.errors) == expected["errors"]
    assert sorted(result.absent) == expected.get("absent", [])


def test_every_model_has_a_golden_case_that_says_where_its_numbers_come_from() -> None:
    assert sorted(set(registry.names()) - {c.parent.name for c in ALL_CASES}) == []
    assert [c.relative_to(CASES_DIR).as_posix() for c in ALL_CASES if not (c / "source.txt").is_file()] == []
    assert [c.parent.name for c in ALL_CASES if c.parent.name not in registry.names()] == []
