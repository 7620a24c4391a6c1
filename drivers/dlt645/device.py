"""Read a DL/T 645 meter: one read request per data identifier, values in canonical units."""

from __future__ import annotations

import time

from drivers.dlt645 import frame
from drivers.errors import BadReply, NoReply, NotConnected
from drivers.model import Model
from drivers.reading import DeviceRead, tidy
from drivers.serialline import LineReader, SerialLine


class Dlt645Reader(LineReader):
    take = staticmethod(frame.take)
    wildcard = frame.WILDCARD

    async def read_address(self, *, retries: int | None = None) -> str:
        """The address of the one meter on the line (read-address to the wildcard address)."""
        reply = await self.line.transact(
            frame.build(frame.WILDCARD, frame.READ_ADDRESS),
            self.replies(frame.WILDCARD),
            retries=retries,
        )
        data: bytes = reply.data
        return data[:6][::-1].hex() if len(data) >= 6 else str(reply.address)

    async def read_di(
        self, addr: str, di: int, *, retries: int | None = None, edition: int = 2007
    ) -> tuple[frame.Frame, bytes, int]:
        """The data of one identifier, following up on B1H replies (data blocks that need several
        frames, asked for with 12H and a frame number). Returns the last reply, the data after the
        identifier, and how many frames it took."""
        di_bytes = 2 if edition == 1997 else 4
        reply = await self.line.transact(
            frame.read_request(addr, di, version=edition), self.replies(addr), retries=retries
        )
        if reply.is_error:
            return reply, b"", 1
        if int.from_bytes(reply.data[:di_bytes], "little") != di:
            raise BadReply(f"reply for another identifier than {di:08X}")
        payload, frames = reply.data[di_bytes:], 1
        while reply.has_more and edition == 2007 and frames < 64:
            request = frame.build(addr, frame.READ_FOLLOW_2007, di.to_bytes(4, "little") + bytes([frames]))
            reply = await self.line.transact(request, self.replies(addr), retries=retries)
            frames += 1
            if reply.is_error:
                return reply, b"", frames
            payload += reply.data[4:-1]  # DI, data, frame number
        return reply, payload, frames

    #: seconds a refused identifier ("no such data") is not asked again; a reload asks at once
    ASK_AGAIN = 86400.0

    def __init__(self, line: SerialLine) -> None:
        super().__init__(line)
        self.refused: dict[tuple[str, int], float] = {}  #: (meter, DI) -> when it said "no such data"

    async def read_meter(
        self, address: int | str, model: Model, names: list[str], *, retries: int | None = None
    ) -> DeviceRead:
        """One read per identifier (a data block serves many points). An identifier the meter says
        it does not have (error word 02H) is absent, not a fault, and not asked again for a day."""
        out = DeviceRead()
        started = time.monotonic()
        addr = str(address)
        points = model.needed_for(names)
        payloads: dict[int, bytes] = {}
        for di in dict.fromkeys(p.address for p in points):
            if started - self.refused.get((addr, di), -self.ASK_AGAIN) < self.ASK_AGAIN:
                continue
            try:
                reply, payload, n = await self.read_di(addr, di, retries=retries, edition=model.edition or 2007)
            except (NoReply, NotConnected) as exc:
                out.requests += 1
                out.failure = exc
                break
            except BadReply as exc:
                out.requests += 1
                out.errors.update({p.name: str(exc) for p in points if p.address == di})
                continue
            out.requests += n
            if reply.is_error:
                word = reply.data[0] if reply.data else 0
                if word == frame.NO_SUCH_DATA:
                    self.refused[(addr, di)] = started
                else:
                    out.errors.update({p.name: frame.error_text(word) for p in points if p.address == di})
                continue
            payloads[di] = payload
            self.refused.pop((addr, di), None)
        width = 4 if model.edition == 1997 else 8
        for p in points:
            if (addr, p.address) in self.refused:
                out.lack(p.name, f"no data identifier {p.address:0{width}X} in this meter (error word 02H)")
        for point in points:
            fmt = point.dlt645
            if point.address not in payloads or fmt is None:
                continue
            payload = payloads[point.address]
            out.registers[point.name] = list(fmt.take(payload))
            try:
                raw = fmt.decode(payload)
            except frame.FrameError as exc:
                out.errors[point.name] = str(exc)
                continue
            out.raw[point.name] = raw
            out.values[point.name] = tidy(raw * point.scale)
        if out.failure is not None:
            for name in names:
                if name not in out.absent:
                    out.errors.setdefault(name, str(out.failure))
        out.seconds = time.monotonic() - started
        return out.only(names)
