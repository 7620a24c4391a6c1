"""Read a CJ/T 188 water meter: 901FH, the cumulative volume in m³."""

from __future__ import annotations

import time

from drivers.cjt188 import frame
from drivers.errors import NoReply, NotConnected
from drivers.frame68 import FrameError
from drivers.model import Model
from drivers.quantities import canonical_unit
from drivers.reading import DeviceRead, tidy
from drivers.serialline import LineReader


class Cjt188Reader(LineReader):
    take = staticmethod(frame.take)
    wildcard = frame.WILDCARD

    async def read_address(self, *, retries: int | None = None) -> str:
        reply = await self.line.transact(frame.read_address_request(), self.replies(frame.WILDCARD), retries=retries)
        return str(reply.address)

    async def read_meter(
        self, address: int | str, model: Model, names: list[str], *, retries: int | None = None
    ) -> DeviceRead:
        out = DeviceRead()
        started = time.monotonic()
        addr = str(address)
        points = model.needed_for(names)
        replies: dict[int, frame.Frame] = {}
        for di in sorted({p.address for p in points}):
            out.requests += 1
            try:
                replies[di] = await self.line.transact(
                    frame.read_request(addr, di), self.replies(addr), retries=retries
                )
            except (NoReply, NotConnected) as exc:
                out.failure = exc
                break
        for p in points:
            reply = replies.get(p.address)
            if reply is None:
                out.errors[p.name] = str(out.failure) if out.failure else "no reply"
                continue
            if reply.is_error:
                out.errors[p.name] = f"meter refused DI {p.address:04X} (status 0x{reply.data.hex().upper()})"
                continue
            try:
                metering = frame.decode_metering(reply.data)
                value, unit = metering.field(p.cjt188 or frame.Field.CURRENT)
            except FrameError as exc:
                out.errors[p.name] = str(exc)
                continue
            out.registers[p.name] = list(reply.data)
            out.raw[p.name] = value
            conv = canonical_unit(unit)
            if conv is None or conv[0] != p.unit:
                out.errors[p.name] = f"meter reports {unit}, the model expects {p.meter_unit}"
                continue
            out.values[p.name] = tidy(value * conv[1]) if p.cjt188 is not frame.Field.STATUS else value
        out.seconds = time.monotonic() - started
        return out.only(names)
