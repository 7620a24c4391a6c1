"""What a reading looks like to a person and to a program: `read`'s table and its JSON, the same
whether the CLI read the meter itself or asked the running daemon (collector.daemon.control), and
the answer a platform's cmd/read gets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from collector.config import Config
from collector.daemon.calibration import Reading
from collector.daemon.counters import Ledger


def iso(ts: datetime) -> str:
    """2026-11-27T08:00:00.412Z"""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def reading_json(r: Reading, config: Config) -> dict[str, Any]:
    meter = config.meter(r.meter)
    return {
        "meter": r.meter,
        "ts": iso(r.ts),
        "values": r.values,
        "raw": r.raw,
        "quality": r.quality,
        "errors": r.errors,
        "absent": r.absent,  #: points the meter says it does not have: not errors
        "failure": r.failure,  #: why the meter gave nothing at all (then every point's error says it too)
        "units": {n: (r.model or meter.model).point(n).unit for n in r.values},
        "model": meter.model.name,
        "requests": r.requests,
    }


def fmt(v: float | int | None) -> str:
    """A value as `read` and the status page show it: 10 significant digits, "-" for none."""
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.10g}"


def render_reading(r: Reading, config: Config, *, raw: bool = False) -> str:
    meter = config.meter(r.meter)
    bus = config.buses[meter.bus]
    model = r.model or meter.model
    where = "unit" if isinstance(meter.address, int) else "address"
    head = (
        f"{r.meter}  {model.name} on {bus.name} ({bus.describe()}) {where} {meter.address}: "
        f"{r.quality}, {r.requests} request(s), {r.seconds * 1000:.0f} ms"
    )
    lines = [head]
    if r.failure is not None:  # one line for the meter, not the same reason against every point
        lines.append(f"  error: {r.failure}")

    def listed(name: str) -> bool:
        if name in r.values or (raw and name in r.raw):
            return True
        return (name in r.errors and r.errors[name] != r.failure) or name in r.absent

    names = [p.name for p in model.points if listed(p.name)]
    names += [n for n in r.errors if not model.has(n) and listed(n)]
    width = max([len(n) for n in names] + [5])
    if raw and names:
        lines.append(f"  {'point':<{width}}  {'registers':<19}  {'raw':>12}  {'meter':>12}  {'calibrated':>12}  unit")
    for name in names:
        if name in r.absent:
            lines.append(f"  {name:<{width}}  absent: {r.absent[name]}")
            continue
        if name in r.errors and not (raw and name in r.raw):  # --raw shows the registers, then the error
            lines.append(f"  {name:<{width}}  error: {r.errors[name]}")
            continue
        if raw:
            p = model.point(name)
            digits = 4 if model.protocol in ("modbus", "sunspec") else 2  # words, or DL/T 645 bytes
            regs = " ".join(f"{w:0{digits}X}" for w in r.registers.get(name, []))
            cal = r.values.get(name)
            shown = fmt(cal) if p.publish else "(not published)"
            lines.append(
                f"  {name:<{width}}  {regs:<19}  {fmt(r.raw.get(name)):>12}  "
                f"{fmt(r.meter_values.get(name)):>12}  {shown:>12}  {p.unit}"
            )
            if name in r.errors and r.errors[name] != r.failure:
                lines.append(f"  {'':<{width}}  error: {r.errors[name]}")
        else:
            lines.append(f"  {name:<{width}}  {fmt(r.values.get(name)):>14} {model.point(name).unit}")
    return "\n".join(lines)


def continued(config: Config, readings: list[Reading]) -> list[Reading]:
    """Counters as the daemon publishes them: continued across the meter replacements the config records."""
    ledger = Ledger(config.consumption_interval)
    for r in readings:
        ledger.process(config.meter(r.meter), r)
    return readings


def reading_doc(r: Reading, config: Config, *, raw: bool = False) -> dict[str, Any]:
    """`read --json`'s object; with ``raw`` also what the meter sent (meter values, registers)."""
    obj = reading_json(r, config)
    if raw:
        obj["meter_values"] = r.meter_values
        obj["registers"] = r.registers
    return obj
