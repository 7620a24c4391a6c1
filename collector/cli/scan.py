"""`meter-collector scan`: who is on this line, and which model is it?

Modbus: every unit id in the range is asked for one register with a short timeout; a reply (even an
exception reply) means a device. Each device is then asked for the probe point of every built-in
Modbus model, and for the SunSpec marker; a model is named when its probe decodes to a plausible
value (a frequency of 45-65 Hz, a voltage of 80-480 V ...). DL/T 645 and CJ/T 188: the read-address
request to the wildcard address, which the one meter on the line answers (several meters answering
at once collide: connect them one at a time). Prints a config snippet to paste.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from drivers import registry, trace
from drivers.dlt645.device import Dlt645Reader
from drivers.errors import BadReply, ExceptionReply, NoReply, NotConnected, TransportError
from drivers.modbus import codec, sunspec
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function
from drivers.serialline import SerialLine

PLAUSIBLE: dict[str, tuple[float, float]] = {
    "frequency": (45.0, 65.0),
    "voltage_l1": (80.0, 480.0),
    "voltage_l2": (80.0, 480.0),
    "voltage_l3": (80.0, 480.0),
    "voltage_l1_l2": (140.0, 830.0),
    "flow_rate": (0.0, 10_000.0),
    "ac_power": (-1.0, 10_000.0),
    "inverter_state": (0.0, 10.0),
}


@dataclass
class Found:
    address: int | str
    model: str | None  #: None: something answers, the model is unknown
    evidence: str


def progress(done: int, total: int, found: int, out: Callable[[str], None]) -> None:
    if trace.ON:
        return  # the frame trace is the progress; a \r line would cut into its lines
    width = 30
    filled = width * done // max(total, 1)
    out(f"\rscanning {done:>3}/{total} [{'#' * filled}{'.' * (width - filled)}] found {found}")


async def identify(transport: ModbusTransport, unit: int) -> Found:
    """Which built-in model answers plausibly at this unit id."""
    try:
        blocks = await sunspec.discover(transport, unit, retries=0)
        common = await sunspec.read_common(transport, unit, blocks, retries=0)
        ids = ",".join(str(b.model_id) for b in blocks)
        declared = {b.model_id for b in blocks}
        meter_only = bool(declared & set(sunspec.METERS)) and not declared & set(sunspec.INVERTERS)
        found = "sunspec-meter" if meter_only else "sunspec-inverter"
        return Found(unit, found, f"SunSpec models {ids} ({common.get('Mn', '?')} {common.get('Md', '')})")
    except TransportError:
        pass
    best: tuple[int, str, str, int] | None = None  # (plausible readings, model, evidence, -checks)
    for name in registry.names():
        model = registry.load(name)
        if model.protocol != "modbus" or not model.probe:
            continue
        # The probe first, then every other point with a plausible range: a model fits only if all of
        # them read plausibly, and the model with the most plausible readings wins (an SDM630 and an
        # SDM120 share the probe; only the SDM630 has plausible voltages on L2 and L3). A point other
        # than the probe that reads 0 neither fits nor fails: an unused phase of a single-phase
        # inverter, a frequency before the grid is there at dawn. On a tie the smaller model wins.
        checks = [model.point(model.probe)] + [p for p in model.points if p.name in PLAUSIBLE and p.name != model.probe]
        evidence = ""
        score = 0
        for point in checks:
            try:
                words = await transport.read(unit, point.function, point.address, point.registers, retries=0)
                value = codec.decode(point, words) * point.scale
            except (TransportError, codec.Unavailable, ValueError):
                break
            lo, hi = PLAUSIBLE.get(point.name, (float("-inf"), float("inf")))
            if point.states and value not in dict(point.states):
                break  # a vendor state code: plausible when the model's table has it
            if value == 0 and point is not checks[0] and not point.states:
                continue
            if not point.states and not lo <= value <= hi:
                break
            score += 1
            evidence = evidence or f"{point.name} = {value:.6g} {point.unit}"
        else:
            if best is None or (score, -len(checks)) > (best[0], best[3]):
                best = (score, name, evidence, -len(checks))
    if best is not None:
        return Found(unit, best[1], best[2])
    return Found(unit, None, "answers, but no built-in model's probe fits")


async def scan_modbus(link: Link, ids: list[int], out: Callable[[str], None]) -> list[Found]:
    transport = ModbusTransport(link)
    found: list[Found] = []
    try:
        for i, unit in enumerate(ids, start=1):
            progress(i - 1, len(ids), len(found), out)
            present = True
            try:
                await transport.read(unit, Function.HOLDING, 0, 1, retries=0)
            except ExceptionReply:
                pass  # it answered: it exists
            except (NoReply, BadReply):
                present = False
            if present:
                found.append(await identify(transport, unit))
        progress(len(ids), len(ids), len(found), out)
    except NotConnected as exc:
        out(f"\n{exc}\n")
        raise
    finally:
        transport.close()
        out("\n")
    return found


async def scan_serial_protocol(protocol: str, line: SerialLine) -> list[Found]:
    if protocol == "dlt645":
        reader: object = Dlt645Reader(line)
        model = "dlt645-2007"
    else:
        from drivers.cjt188.device import Cjt188Reader

        reader = Cjt188Reader(line)
        model = "cjt188-water"
    try:
        address = await reader.read_address(retries=1)  # type: ignore[attr-defined]
        if protocol == "dlt645":
            model = await dlt645_edition(reader, address)  # type: ignore[arg-type]
    except NoReply:
        return []
    finally:
        line.close()
    return [Found(address, model, "answered the wildcard address")]


async def dlt645_edition(reader: Dlt645Reader, address: str) -> str:
    """dlt645-2007 if the meter answers a 2007 read (11H) of its total energy, dlt645-1997 if only
    a 1997 read (01H) of 9010H; a meter that answers neither is proposed as 2007."""
    for di, edition, model in ((0x00010000, 2007, "dlt645-2007"), (0x9010, 1997, "dlt645-1997")):
        try:
            reply, _, _ = await reader.read_di(address, di, retries=1, edition=edition)
        except (NoReply, BadReply):
            continue
        if not reply.is_error:
            return model
    return "dlt645-2007"


def snippet(found: list[Found], bus: dict[str, object]) -> str:
    """A config fragment for what was found."""
    bus_text = ", ".join(f"{k}: {v}" for k, v in bus.items())
    lines = ["buses:", f"  - {{{bus_text}}}", "meters:"]
    for f in found:
        address = f'"{f.address}"' if isinstance(f.address, str) else f.address
        model = f.model or "FILL-IN  # no built-in model recognised it"
        lines.append(f"  - {{id: meter-{f.address}, bus: {bus['name']}, address: {address}, model: {model}}}")
    return "\n".join(lines)


def stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
