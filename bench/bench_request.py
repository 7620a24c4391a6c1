"""CPU per Modbus request on the client side: our transport (pymodbus under it) against a minimal
asyncio client doing the same request, in the same run.

Run:  .venv/bin/python bench/bench_request.py [--requests 3000] [--runs 5]

A `meter-collector simulate` process serves an SDM630 over Modbus TCP on loopback. Each run sends
the same read (30 input registers at 0x0000, unit 1) ``--requests`` times, one after the other, with
(a) drivers.modbus.transport.ModbusTransport, the path every poll takes, and (b) the baseline: an
asyncio stream that writes the MBAP frame built with struct and reads the reply, checks the
transaction id and unpacks the words (what any Modbus TCP client must do at least). The figures are
this process's CPU time (the simulator's is not counted) per request; median of the runs,
interleaved so that a busy moment hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function

ADDRESS, COUNT, UNIT = 0, 30, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ours(port: int, n: int) -> float:
    t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, timeout=2.0, retries=0))
    await t.read(UNIT, Function.INPUT, ADDRESS, COUNT)  # connect outside the measurement
    start = time.process_time()
    for _ in range(n):
        await t.read(UNIT, Function.INPUT, ADDRESS, COUNT)
    spent = time.process_time() - start
    t.close()
    return spent


async def floor(port: int, n: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = struct.Struct(">HHHB")
    words = struct.Struct(f">{COUNT}H")

    async def once(tid: int) -> tuple[int, ...]:
        writer.write(head.pack(tid, 0, 6, UNIT) + struct.pack(">BHH", 4, ADDRESS, COUNT))
        mbap = await reader.readexactly(7)
        got, _, length, _ = head.unpack(mbap)
        body = await reader.readexactly(length - 1)
        if got != tid or body[0] != 4:
            raise RuntimeError("reply out of step")
        return words.unpack_from(body, 2)

    await once(0)
    start = time.process_time()
    for i in range(n):
        await once((i + 1) & 0xFFFF)
    spent = time.process_time() - start
    writer.close()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "simulate", "--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        sim.stdout.readline()  # the banner: it listens
        a, b = [], []
        for _ in range(args.runs):
            a.append(asyncio.run(ours(port, args.requests)) / args.requests * 1e6)
            b.append(asyncio.run(floor(port, args.requests)) / args.requests * 1e6)
    finally:
        sim.kill()
        sim.wait()
    o, f = statistics.median(a), statistics.median(b)
    print(f"Modbus TCP request, client CPU per request, {args.requests} requests x {args.runs} runs (median)")
    print(f"  ours (ModbusTransport, pymodbus) {o:8.1f} us   (runs: {', '.join(f'{x:.0f}' for x in a)})")
    print(f"  floor (asyncio stream + struct)  {f:8.1f} us   (runs: {', '.join(f'{x:.0f}' for x in b)})")
    print(f"  ours/floor                       {o / f:8.2f}")


if __name__ == "__main__":
    main()
