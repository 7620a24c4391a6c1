"""Read a meter: execute a plan over a transport and decode the replies into values.

Values come out in canonical units before any site calibration; CT/PT ratios, offsets and counter
continuity belong to collector.daemon.calibration.
"""

from __future__ import annotations

import struct
import time
from typing import Protocol

from drivers.errors import NoReply, NotConnected, TransportError
from drivers.modbus import codec
from drivers.modbus.planner import Request, plan
from drivers.model import Function, Model, Point
from drivers.reading import DeviceRead, tidy

#: the exponents a scale-factor register may hold (SunSpec: sunssf, -10..10)
SF_RANGE = (-10, 10)


def _label(name: str) -> str:
    """A helper point's name as the meter's documentation writes it (m103_w_sf -> W_SF)."""
    from drivers.modbus import sunspec  # sunspec builds on this module

    return sunspec.label(name)


class RegisterReader(Protocol):
    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]: ...


async def _read_all(
    reader: RegisterReader, unit: int, requests: list[Request], retries: int | None
) -> list[bytes | TransportError]:
    """Each request's register bytes or the error it ended with, up to the first NoReply or
    NotConnected: from the transport's ``read_plan`` (ModbusTransport: the requests chained), else
    one ``read`` at a time."""
    whole = getattr(reader, "read_plan", None)
    if whole is not None:
        outcomes: list[bytes | TransportError] = await whole(
            unit, [(r.function, r.address, r.count) for r in requests], retries=retries
        )
        return outcomes
    outcomes = []
    for req in requests:
        try:
            regs = await reader.read(unit, req.function, req.address, req.count, retries=retries)
        except TransportError as exc:
            outcomes.append(exc)
            if isinstance(exc, (NoReply, NotConnected)):
                break
            continue
        outcomes.append(struct.pack(f">{len(regs)}H", *regs))
    return outcomes


def decode(requests: list[Request], replies: list[bytes | None], out: DeviceRead) -> None:
    """Fill ``out`` from the register bytes of each request's reply (None: that request failed).

    A point that is only scaled (most are) gets its value in the first pass; states, scale-factor
    registers, sums and unit codes need every raw number of the read first."""
    points: dict[str, Point] = {}
    later: list[Point] = []
    values, raws, registers = out.values, out.raw, out.registers
    for req, data in zip(requests, replies, strict=True):
        if data is None:
            for point, _ in req.points:
                points[point.name] = point
            continue
        regs = codec.words(data)
        for (point, name, lo, hi, kind), raw in zip(req.layout.spans, req.layout.unpack(data), strict=True):
            points[name] = point
            registers[name] = regs[lo:hi]
            if isinstance(raw, codec.Unavailable):
                if isinstance(raw, codec.Absent):
                    out.lack(name, str(raw))
                else:
                    out.errors[name] = str(raw)
                continue
            raws[name] = raw
            if kind == codec.AS_IS:
                values[name] = float(raw)
            elif kind == codec.ROUND7:
                values[name] = codec.round7(raw * point.scale)
            elif kind == codec.TIDY:
                values[name] = tidy(raw * point.scale)
            else:
                later.append(point)
    if later:
        _derive(later, points, out)


def _derive(later: list[Point], points: dict[str, Point], out: DeviceRead) -> None:
    """Values of points that need other points: states, scale factors, ``add`` and ``scale_by``."""
    base: dict[str, float] = dict(out.values)
    for point in later:
        name = point.name
        value = out.raw[name] * point.scale
        if point.states:
            state = _state(point, out.raw[name])
            if state is None:
                pattern = int(out.raw[name]) % 2 ** (16 * point.registers)  # a signed register: its bits
                out.errors[name] = f"state code 0x{pattern:0{4 * point.registers}X} is not in the model's table"
                continue
            value = state
        if point.scale_factor:
            sf = out.raw.get(point.scale_factor)
            if sf is None:
                # A value without its scale factor cannot be read: a fault, even if the SF is "not implemented".
                out.errors[name] = f"scale factor {_label(point.scale_factor)} unavailable"
                continue
            if not SF_RANGE[0] <= sf <= SF_RANGE[1]:  # 10.0 ** 400 would raise OverflowError
                out.errors[name] = (
                    f"scale factor {_label(point.scale_factor)} = {sf:g} is outside {SF_RANGE[0]}..{SF_RANGE[1]}"
                )
                continue
            value *= 10.0 ** int(sf)
        base[name] = value
    for point in later:
        name = point.name
        if name not in base:
            continue
        value = base[name]
        missing = [a for a in point.add if a not in base] + [b for b in point.scale_by if b not in out.raw]
        if missing:
            out.errors[name] = f"{', '.join(missing)} unavailable"
            continue
        value += sum(base[a] for a in point.add)
        for ref in point.scale_by:
            setting, code = points[ref], int(out.raw[ref])
            factor = dict(setting.factors).get(code)
            if factor is None:
                known = ", ".join(str(c) for c, _ in setting.factors)
                out.errors[name] = (
                    f"{ref} = {code} (register {setting.address}) is not a code the model knows ({known}): "
                    "the value is refused rather than published in the wrong unit"
                )
                break
            value *= factor
        else:
            out.values[name] = tidy(value)


def _state(point: Point, code: float) -> int | None:
    """The canonical number (drivers/quantities.py INVERTER_STATES) of a vendor's state code."""
    return next((state for vendor, state in point.states if vendor == code), None)


async def read_device(
    reader: RegisterReader,
    unit: int,
    model: Model,
    names: list[str],
    *,
    gap: int,
    single: bool = False,
    retries: int | None = None,
) -> DeviceRead:
    """Read ``names`` (and the helper points they need) from one meter.

    A request that gets an exception reply fails only its own points; no reply at all, or a link
    that cannot be opened, ends the read (a dead meter costs its bus one timeout, not one per
    request).
    """
    key = ("plan", tuple(names), gap, single)
    requests = model.derived(key, lambda: plan(model, model.needed_for(names), gap=gap, single=single))
    out = DeviceRead()
    replies: list[bytes | None] = []
    started = time.monotonic()
    outcomes = await _read_all(reader, unit, requests, retries)  # they end at a meter that is gone
    for req, outcome in zip(requests, outcomes, strict=False):
        out.requests += 1
        if isinstance(outcome, bytes):
            replies.append(outcome)
            continue
        if isinstance(outcome, (NoReply, NotConnected)):
            out.failure = outcome
            break
        replies.append(None)  # an exception reply, or another fault of this request alone
        for p, _ in req.points:
            out.errors[p.name] = str(outcome)
    replies.extend([None] * (len(requests) - len(replies)))
    out.seconds = time.monotonic() - started
    decode(requests, replies, out)
    if out.failure is not None:
        for p in model.needed_for(names):
            if p.name not in out.absent:
                out.errors.setdefault(p.name, str(out.failure))
    # Report only what was asked; helper points stay internal unless asked for.
    helpers = model.derived(("helpers", key), lambda: {p.name for p in model.needed_for(names)} - set(names))
    return out.only(names) if helpers else out
