"""A Modbus bus as a MeterReader: mapped models through the planner, SunSpec devices by discovery."""

from __future__ import annotations

from drivers.errors import TransportError
from drivers.modbus import sunspec
from drivers.modbus.device import read_device
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Model
from drivers.reading import DeviceRead


class ModbusReader:
    def __init__(self, link: Link, gap: int) -> None:
        self.transport = ModbusTransport(link)
        self.gap = gap
        self.discovered: dict[int, Model] = {}  #: SunSpec unit id -> what it declared

    @property
    def requests(self) -> int:
        return self.transport.requests

    @property
    def timeouts(self) -> int:
        return self.transport.timeouts

    @property
    def garbled(self) -> int:
        return self.transport.garbled

    def close(self) -> None:
        self.transport.close()

    async def read_meter(
        self, address: int | str, model: Model, names: list[str], *, retries: int | None = None
    ) -> DeviceRead:
        unit = int(address)
        if model.protocol != "sunspec":
            return await read_device(self.transport, unit, model, names, gap=self.gap, retries=retries)
        found = self.discovered.get(unit)
        if found is None:
            try:
                blocks = await sunspec.discover(self.transport, unit, retries=retries)
                common = await sunspec.read_common(self.transport, unit, blocks, retries=retries)
            except TransportError as exc:
                return DeviceRead(failure=exc, errors={n: str(exc) for n in names})
            found = self.discovered[unit] = sunspec.build_model(blocks, common)
        wanted = list(names) or [p.name for p in found.published]
        known = [n for n in wanted if found.has(n)]
        result = await read_device(self.transport, unit, found, known, gap=self.gap, retries=retries)
        for n in wanted:
            if not found.has(n):
                result.lack(n, "not offered by this inverter")
        result.model = found
        if result.failure is not None:
            self.discovered.pop(unit, None)  # discover again: it may have been replaced
        return result
