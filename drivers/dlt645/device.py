"""Read a DL/T 645 meter: one read request per data identifier, values in canonical units."""

from __future__ import annotations

import time

from drivers.dlt645 import frame
from drivers.errors import NoReply, NotConnected
from drivers.model import Model
from drivers.reading import DeviceRead, tidy
from drivers.serialline import LineReader, SerialLine


class Dlt645Reader(LineReader):
    take = staticmethod(frame.take)
    wildcard = frame.WILDCARD

    def __init__(self, line: SerialLine, *, version: int = 2007) -> None:
        super().__init__(line)
        self.version = version

    async def read_address(self, *, retries: int | None = None) -> str:
        """The address of the one meter on the line (read-address to the wildcard address)."""
        reply = await self.line.transact(
            frame.build(frame.WILDCARD, frame.READ_ADDRESS),
            self.replies(frame.WILDCARD),
            retries=retries,
        )
        data: bytes = reply.data
        return data[:6][::-1].hex() if len(data) >= 6 else str(reply.address)

    async def read_meter(
        self, address: int | str, model: Model, names: list[str], *, retries: int | None = None
    ) -> DeviceRead:
        out = DeviceRead()
        started = time.monotonic()
        addr = str(address)
        di_bytes = 2 if self.version == 1997 else 4
        for point in model.needed_for(names):
            out.requests += 1
            try:
                reply = await self.line.transact(
                    frame.read_request(addr, point.address, version=self.version),
                    self.replies(addr),
                    retries=retries,
                )
            except (NoReply, NotConnected) as exc:
                out.failure = exc
                break
            if reply.is_error:
                word = reply.data[0] if reply.data else 0
                out.errors[point.name] = frame.error_text(word)
                continue
            di = int.from_bytes(reply.data[:di_bytes], "little")
            if di != point.address:
                out.errors[point.name] = f"reply for DI {di:08X}, asked {point.address:08X}"
                continue
            payload = reply.data[di_bytes:]
            out.registers[point.name] = list(payload[: point.digits // 2])
            try:
                raw = frame.decode_bcd(payload, point.digits, point.decimals, point.signed)
            except frame.FrameError as exc:
                out.errors[point.name] = str(exc)
                continue
            out.raw[point.name] = raw
            out.values[point.name] = tidy(raw * point.scale)
        if out.failure is not None:
            for name in names:
                out.errors.setdefault(name, str(out.failure))
        out.seconds = time.monotonic() - started
        asked = set(names)
        for d in (out.values, out.errors):
            for k in [k for k in d if k not in asked]:
                del d[k]
        return out
