"""The meter side of CJ/T 188, for the simulator: answers 901FH reads and read-address."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from collector.simulator.serial import FrameSlaveServer
from drivers.cjt188 import frame

#: a meter: -> (current m³, settlement-day m³, clock YYYYMMDDhhmmss, status)
MeterData = Callable[[], tuple[float, float, str, int]]


class Cjt188Slave:
    def __init__(
        self, meters: dict[str, MeterData], *, meter_type: int = frame.COLD_WATER, order: str = "little"
    ) -> None:
        self.meters = meters
        self.meter_type = meter_type
        self.order = order  #: the DI byte order these meters speak; a request in the other gets no answer
        self.requests: Counter[str] = Counter()

    def answer(self, request: frame.Frame) -> bytes | None:
        if request.is_reply:
            return None
        spoken = frame.di_of(request.data)
        if spoken is not None and spoken[1] != self.order:
            return None  # a meter of the other kind: silent
        if request.control == frame.READ_ADDRESS and request.address == frame.WILDCARD:
            if len(self.meters) != 1:
                return b"\x68\x10\x55" if self.meters else None
            (address,) = self.meters
            self.requests[address] += 1
            return frame.build(self.meter_type, address, 0x83, request.data)
        data_of = self.meters.get(request.address)
        if data_of is None or request.meter_type not in (self.meter_type, frame.TYPE_ANY):
            return None
        self.requests[request.address] += 1
        di = spoken[0] if spoken is not None else 0
        ser = request.data[2] if len(request.data) > 2 else 0
        if request.control != frame.READ or di != frame.DI_METERING:
            return frame.build(self.meter_type, request.address, 0xC1, request.data[:3] + b"\x00\x00")
        current, settlement, clock, status = data_of()
        return frame.build(
            self.meter_type,
            request.address,
            0x81,
            frame.encode_metering(current, settlement, clock, status, ser, order=self.order),
        )


def serial_server(slave: Cjt188Slave, device: str, baudrate: int = 2400, parity: str = "N") -> FrameSlaveServer:
    return FrameSlaveServer(frame.take, slave.answer, device, baudrate, parity)
