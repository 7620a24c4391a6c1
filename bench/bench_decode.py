"""CPU per value of the decode path, in-process: plan, decode, scale, calibrate one meter's reply.

Run:  .venv/bin/python bench/bench_decode.py [--model eastron-sdm630] [--reads 5000] [--runs 5]

No wire, no event loop cost beyond one coroutine per read: the registers come from the simulator's
register image, answered by a reader that returns them at once. What is left is what our own code
spends per value between the reply's words and a calibrated Reading. Baseline, in the same run: the
floor of any decoder, one ``struct.unpack`` of the same words per request and a dict of the floats.
Prints the median of several runs and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config import Calibration, Meter
from collector.daemon.calibration import calibrate
from collector.simulator.meters import SimulatedMeter
from drivers import registry
from drivers.modbus.device import read_device
from drivers.modbus.planner import DEFAULT_GAP_TCP, plan
from drivers.model import Function


class Image:
    """Answers reads from a frozen register image."""

    def __init__(self, sim: SimulatedMeter) -> None:
        self.sim = sim
        self.replies: dict[tuple[int, int, int], list[int]] = {}
        self.data: dict[tuple[int, int, int], bytes] = {}

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        key = (function.code, address, count)
        if key not in self.replies:  # the simulator's cost is not ours: each reply computed once
            words = self.sim.read(function.code, address, count)
            assert isinstance(words, list)
            self.replies[key] = words
        return list(self.replies[key])

    async def read_data(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> bytes:
        """As the Modbus TCP transport answers: the reply's register bytes."""
        words = await self.read(unit, function, address, count)
        key = (function.code, address, -count)
        if key not in self.data:
            self.data[key] = struct.pack(f">{count}H", *words)
        return self.data[key]


def ours(model_name: str, reads: int) -> tuple[float, int]:
    model = registry.load(model_name)
    names = [p.name for p in model.published]
    meter = Meter(
        id="m1", bus="b", address=1, model=model, model_ref=model_name, points=tuple(names), calibration=Calibration()
    )
    reader = Image(SimulatedMeter(model, 1, static=True))
    now = datetime.now(UTC)

    async def go() -> float:
        t = time.process_time()
        for _ in range(reads):
            r = await read_device(reader, 1, model, names, gap=DEFAULT_GAP_TCP)
            calibrate(meter, r, now, now)
        return time.process_time() - t

    return asyncio.run(go()), len(names) * reads


def floor(model_name: str, reads: int) -> tuple[float, int]:
    model = registry.load(model_name)
    names = [p.name for p in model.published]
    sim = SimulatedMeter(model, 1, static=True)
    requests = plan(model, model.needed_for(names), gap=DEFAULT_GAP_TCP)
    replies = []
    for req in requests:
        words = sim.read(req.function.code, req.address, req.count)
        assert isinstance(words, list)
        replies.append((struct.Struct(f">{req.count}H"), struct.pack(f">{req.count}H", *words)))
    fmt = struct.Struct(">f")
    t = time.process_time()
    for _ in range(reads):
        out = {}
        for (_, data), req in zip(replies, requests, strict=True):
            for point, offset in req.points:
                out[point.name] = fmt.unpack_from(data, 2 * offset)[0]
    return time.process_time() - t, len(names) * reads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="eastron-sdm630")
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    ours_us, floor_us = [], []
    for _ in range(args.runs):  # interleaved, so a busy moment hits both
        cpu, values = ours(args.model, args.reads)
        ours_us.append(cpu / values * 1e6)
        cpu, values = floor(args.model, args.reads)
        floor_us.append(cpu / values * 1e6)
    o, f = statistics.median(ours_us), statistics.median(floor_us)
    print(f"decode path, {args.model}, {args.reads} reads x {args.runs} runs (median, CPU time)")
    print(f"  ours        {o:7.2f} us per value   (runs: {', '.join(f'{x:.2f}' for x in ours_us)})")
    print(f"  floor       {f:7.2f} us per value   (struct.unpack per point, the same words)")
    print(f"  ours/floor  {o / f:7.1f}")


if __name__ == "__main__":
    main()
