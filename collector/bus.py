"""Buses: one transport per physical bus, one transaction on it at a time.

For now this holds the one-shot read used by `read` and `demo`; the daemon's per-bus worker with
backoff and health builds on the same pieces.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from collector.calibration import Reading, calibrate
from collector.config import Bus, Config, Meter
from drivers.modbus.device import read_device
from drivers.modbus.planner import DEFAULT_GAP_SERIAL, DEFAULT_GAP_TCP
from drivers.modbus.transport import Link, ModbusTransport


def link_for(bus: Bus) -> Link:
    return Link(
        kind=bus.type,
        host=bus.host,
        port=bus.port,
        device=bus.device,
        baudrate=bus.baudrate,
        parity=bus.parity,
        stopbits=bus.stopbits,
        bytesize=bus.bytesize,
        timeout=bus.timeout,
        retries=bus.retries,
        pause=bus.pause,
        drain=bus.drain,
    )


def gap_for(bus: Bus) -> int:
    if bus.gap is not None:
        return bus.gap
    return DEFAULT_GAP_TCP if bus.type == "tcp" else DEFAULT_GAP_SERIAL


async def read_meter(
    transport: ModbusTransport, bus: Bus, meter: Meter, names: list[str] | None = None, slot: datetime | None = None
) -> Reading:
    ts = datetime.now(UTC)
    wanted = list(names if names is not None else meter.points)
    result = await read_device(transport, meter.address, meter.model, wanted, gap=gap_for(bus))
    return calibrate(meter, result, slot or ts.replace(microsecond=0), ts)


async def read_once(config: Config, meters: list[Meter], *, with_hidden: bool = False) -> list[Reading]:
    """Read each meter once: buses in parallel, meters on one bus one after the other."""
    by_bus: dict[str, list[Meter]] = {}
    for m in meters:
        by_bus.setdefault(m.bus, []).append(m)

    async def one_bus(name: str, ms: list[Meter]) -> list[Reading]:
        bus = config.buses[name]
        transport = ModbusTransport(link_for(bus))
        out = []
        try:
            for m in ms:
                names = list(m.points)
                if with_hidden:
                    names += [p.name for p in m.model.points if not p.publish and p.name not in names]
                out.append(await read_meter(transport, bus, m, names))
        finally:
            transport.close()
        return out

    results = await asyncio.gather(*(one_bus(n, ms) for n, ms in by_bus.items()))
    order = {m.id: i for i, m in enumerate(meters)}
    return sorted((r for rs in results for r in rs), key=lambda r: order[r.meter])
