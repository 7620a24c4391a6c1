"""The meter side of DL/T 645, for the simulator: answers reads (11H) and read-address (13H)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from collector.simulator.serial import FrameSlaveServer
from drivers.dlt645 import frame

#: a meter: data identifier -> value bytes (least significant first), or None for "no such data"
MeterData = Callable[[int], bytes | None]


class Dlt645Slave:
    def __init__(self, meters: dict[str, MeterData], *, baudrate: int | None = None, frame_data: int = 16) -> None:
        self.meters = meters
        self.baudrate = baudrate
        #: values longer than this go out in follow-up frames (B1H, then 12H/92H-B2H): real meters split
        #: only long blocks; the simulator splits early so that path is exercised
        self.frame_data = frame_data
        self.pending: dict[tuple[str, int], list[bytes]] = {}
        self.requests: Counter[str] = Counter()
        self.unanswered = 0

    def answer(self, request: frame.Frame) -> bytes | None:
        if request.is_reply:
            return None
        if request.control == frame.READ_ADDRESS and request.address == frame.WILDCARD:
            if len(self.meters) != 1:
                # Every meter answers at once: on a real line the replies collide into noise.
                return b"\x68\x55\xaa\x13" if self.meters else None
            (address,) = self.meters
            self.requests[address] += 1
            return frame.build(address, 0x93, frame.address_bytes(address))
        data_of = self.meters.get(request.address)
        if data_of is None:
            self.unanswered += 1
            return None
        self.requests[request.address] += 1
        if request.control == frame.READ_FOLLOW_2007 and len(request.data) == 5:
            di = int.from_bytes(request.data[:4], "little")
            chunks = self.pending.get((request.address, di))
            if not chunks:
                return frame.build(request.address, 0xD2, bytes([0x02]))
            chunk = chunks.pop(0)
            control = 0xB2 if chunks else 0x92
            return frame.build(request.address, control, request.data[:4] + chunk + request.data[4:5])
        if request.control == frame.READ_1997 and len(request.data) == 2:  # DL/T 645-1997: 2-byte identifier
            value = data_of(int.from_bytes(request.data, "little"))
            if value is None:
                return frame.build(request.address, 0xC1, bytes([0x02]))
            return frame.build(request.address, 0x81, request.data + value)
        if request.control != frame.READ_2007 or len(request.data) != 4:
            return frame.build(request.address, request.control | 0xC0, bytes([0x01]))
        di = int.from_bytes(request.data, "little")
        value = data_of(di)
        if value is None:
            return frame.build(request.address, 0xD1, bytes([0x02]))  # error word bit 1: no such data
        if len(value) > self.frame_data:
            size = self.frame_data
            self.pending[(request.address, di)] = [value[i : i + size] for i in range(size, len(value), size)]
            return frame.build(request.address, 0xB1, request.data + value[:size])
        return frame.build(request.address, 0x91, request.data + value)

    def wire_delay(self, request_bytes: int, reply_bytes: int) -> float:
        return (request_bytes + reply_bytes) * 11 / self.baudrate if self.baudrate else 0.0


def serial_server(slave: Dlt645Slave, device: str, baudrate: int = 2400, parity: str = "N") -> FrameSlaveServer:
    return FrameSlaveServer(
        frame.take,
        slave.answer,
        device,
        baudrate,
        parity,
        delay=lambda request, reply: slave.wire_delay(16, len(reply)),
    )
