"""Read a CJ/T 188 water meter: 901FH, the cumulative volume in m³."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from drivers.cjt188 import frame
from drivers.errors import NoReply, NotConnected
from drivers.frame68 import FrameError
from drivers.model import Model
from drivers.quantities import canonical_unit
from drivers.reading import DeviceRead, tidy
from drivers.serialline import LineReader, SerialLine


class Cjt188Reader(LineReader):
    """Reads 901FH. A meter that stays silent is asked again with the DI's other byte order (90 1F
    instead of 1F 90); what worked is kept per meter for as long as the reader lives (a reload or a
    restart learns it again), so only the first poll of such a meter costs one timeout more."""

    take = staticmethod(frame.take)
    wildcard = frame.WILDCARD

    def __init__(self, line: SerialLine) -> None:
        super().__init__(line)
        self.orders: dict[str, str] = {}  #: meter address -> the DI byte order it answers

    async def read_address(self, *, retries: int | None = None) -> str:
        """The one meter on the line (read-address to the wildcard), in either DI byte order."""
        reply = await self._ask(
            frame.DI_ORDERS, lambda order: frame.read_address_request(order=order), frame.WILDCARD, retries
        )
        return str(reply.address)

    async def _read(self, addr: str, di: int, retries: int | None) -> frame.Frame:
        known = self.orders.get(addr)
        orders = (known,) if known else frame.DI_ORDERS
        return await self._ask(orders, lambda order: frame.read_request(addr, di, order=order), addr, retries)

    async def _ask(
        self, orders: tuple[str, ...], request: Callable[[str], bytes], sender: str, retries: int | None
    ) -> frame.Frame:
        """Each DI byte order in turn until the meter answers (its silence to the last is raised);
        the order that worked is remembered for the meter that answered."""
        for order in orders[:-1]:
            with contextlib.suppress(NoReply):
                return await self._send(request(order), order, sender, retries)
        return await self._send(request(orders[-1]), orders[-1], sender, retries)

    async def _send(self, request: bytes, order: str, sender: str, retries: int | None) -> frame.Frame:
        reply: frame.Frame = await self.line.transact(request, self.replies(sender), retries=retries)
        self.orders[str(reply.address)] = order
        return reply

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
                replies[di] = await self._read(addr, di, retries)
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
            except frame.NoValue as exc:
                out.lack(p.name, str(exc))
                continue
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
