"""Debian's mbpoll (libmodbus): an independent Modbus master to cross-check our simulator and reader."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import need

_ROW = re.compile(r"^\[(\d+)\]:\s+(-?[\d.eE+-]+|nan|-?inf)")


def mbpoll(
    target: list[str], unit: int, address: int, count: int, table: str = "3", *, float32: bool = False
) -> dict[int, float]:
    """Read once; {address: value}. table 3 = input registers, 4 = holding; zero-based addresses."""
    exe = need("mbpoll")
    kind = f"{table}:float" if float32 else table
    args = [
        exe,
        *target[:-1],
        "-a",
        str(unit),
        "-r",
        str(address),
        "-c",
        str(count),
        "-t",
        kind,
        "-0",
        "-B",
        "-1",
        target[-1],
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    values = {}
    for line in out.stdout.splitlines():
        m = _ROW.match(line.strip())
        if m:
            values[int(m.group(1))] = float(m.group(2))
    return values
