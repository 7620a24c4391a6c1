"""The Modbus transport over real ptys and loopback TCP: stale replies, silence, short replies,
an adapter that disappears and returns."""

from __future__ import annotations

import asyncio
import time

import pytest

from collector.simulator.modbus import SerialServer, Slave, TcpServer
from drivers.errors import BadReply, NoReply, NotConnected
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function
from drivers.serialport import SerialSettings
from tests.conftest import PtyPair


class Registers:
    """A device whose holding register n holds n * 10 (so any mix-up shows)."""

    def __init__(self, short: bool = False) -> None:
        self.short = short

    def read(self, function: int, address: int, count: int) -> list[int] | int:
        words = [(address + i) * 10 for i in range(count)]
        return words[:-1] if self.short else words


def rtu(pair: PtyPair, **kw: object) -> ModbusTransport:
    return ModbusTransport(Link(kind="rtu", serial=SerialSettings(pair.b, 9600), **kw))  # type: ignore[arg-type]


def test_a_late_reply_is_never_taken_as_the_next_answer(pty_pair: PtyPair) -> None:
    async def go() -> None:
        slave = Slave({1: Registers()})
        # Register 0 answers after the timeout; register 100 is slow but in time (as in LIBRARIES.md).
        slave.delay_for = lambda unit, fc, address: {0: 0.4, 100: 0.2}.get(address, 0.0)
        server = SerialServer(slave, pty_pair.a)
        await server.start()
        t = rtu(pty_pair, timeout=0.3, retries=0)
        try:
            with pytest.raises(NoReply):
                await t.read(1, Function.HOLDING, 0, 2)
            # The late reply [0, 10] arrives while we ask for register 100: we must get [1000, 1010].
            assert await t.read(1, Function.HOLDING, 100, 2) == [1000, 1010]
            assert await t.read(1, Function.HOLDING, 7, 1) == [70]
        finally:
            t.close()
            await server.stop()

    asyncio.run(go())


def test_an_unknown_unit_is_silent_on_a_serial_line_and_costs_one_timeout_per_attempt(pty_pair: PtyPair) -> None:
    async def go() -> None:
        slave = Slave({1: Registers()}, silent_unknown=True)
        server = SerialServer(slave, pty_pair.a)
        await server.start()
        t = rtu(pty_pair, timeout=0.15, retries=1, drain=0.0)
        try:
            started = time.monotonic()
            with pytest.raises(NoReply):
                await t.read(9, Function.HOLDING, 0, 1)
            elapsed = time.monotonic() - started
            assert 0.3 <= elapsed < 0.6  # two attempts of 150 ms, nothing more
            assert slave.unanswered == 2 and t.timeouts == 2
            assert await t.read(1, Function.HOLDING, 3, 1) == [30]  # the bus goes on
        finally:
            t.close()
            await server.stop()

    asyncio.run(go())


def test_a_reply_with_the_wrong_register_count_is_refused() -> None:
    async def go() -> None:
        server = TcpServer(Slave({1: Registers(short=True)}, silent_unknown=False), "127.0.0.1", 0)
        await server.start()
        t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=server.port, timeout=0.5))
        try:
            with pytest.raises(BadReply, match="asked 4 registers"):
                await t.read(1, Function.HOLDING, 0, 4)
        finally:
            t.close()
            await server.stop()

    asyncio.run(go())


def test_the_pause_between_requests_is_honoured(pty_pair: PtyPair) -> None:
    async def go() -> None:
        server = SerialServer(Slave({1: Registers()}), pty_pair.a)
        await server.start()
        t = rtu(pty_pair, timeout=0.5, pause=0.05)
        try:
            started = time.monotonic()
            for _ in range(5):
                await t.read(1, Function.HOLDING, 0, 1)
            assert time.monotonic() - started >= 4 * 0.05
        finally:
            t.close()
            await server.stop()

    asyncio.run(go())


def test_an_adapter_that_disappears_and_returns_is_reopened(pty_pair: PtyPair) -> None:
    async def go() -> None:
        server = SerialServer(Slave({1: Registers()}), pty_pair.a)
        await server.start()
        t = rtu(pty_pair, timeout=0.2, retries=0)
        try:
            assert await t.read(1, Function.HOLDING, 1, 1) == [10]
            await server.stop()
            pty_pair.stop()  # unplugged: the device nodes are gone
            with pytest.raises((NotConnected, NoReply)):
                await t.read(1, Function.HOLDING, 1, 1)
            with pytest.raises(NotConnected):
                await t.read(1, Function.HOLDING, 1, 1)
            pty_pair.start()  # plugged back in
            server2 = SerialServer(Slave({1: Registers()}), pty_pair.a)
            await server2.start()
            try:
                assert await t.read(1, Function.HOLDING, 2, 1) == [20]
            finally:
                await server2.stop()
        finally:
            t.close()

    asyncio.run(go())


def test_a_dlt645_line_whose_adapter_disappears_is_reopened(pty_pair: PtyPair) -> None:
    from collector.simulator.dlt645 import Dlt645Slave, serial_server
    from drivers import registry
    from drivers.dlt645.device import Dlt645Reader
    from drivers.serialline import SerialLine

    model = registry.load("dlt645-2007")
    address = "000000000042"

    def meter(di: int) -> bytes | None:
        return bytes.fromhex("07215301") if di == 0x00010000 else None  # 15321.07 kWh

    async def go() -> None:
        server = serial_server(Dlt645Slave({address: meter}), pty_pair.a)
        await server.start()
        reader = Dlt645Reader(SerialLine(SerialSettings(pty_pair.b, 2400, parity="N"), timeout=0.3, retries=0))
        try:
            r = await reader.read_meter(address, model, ["energy_import"])
            assert r.values == {"energy_import": 15321.07}
            await server.stop()
            pty_pair.stop()  # unplugged
            r = await reader.read_meter(address, model, ["energy_import"])
            assert r.failure is not None and not r.values
            pty_pair.start()  # back
            server = serial_server(Dlt645Slave({address: meter}), pty_pair.a)
            await server.start()
            r = await reader.read_meter(address, model, ["energy_import"])
            assert r.values == {"energy_import": 15321.07}, r.errors
        finally:
            reader.close()
            await server.stop()

    asyncio.run(go())


def test_the_simulated_turnaround_delays_every_answer_and_the_transport_waits_it_out() -> None:
    """`simulate --turnaround`: a meter that answers 150 ms after each request, read over TCP."""

    async def go() -> tuple[float, float]:
        slow = TcpServer(Slave({1: Registers()}, silent_unknown=False, turnaround=0.15), "127.0.0.1", 0)
        quick = TcpServer(Slave({1: Registers()}, silent_unknown=False), "127.0.0.1", 0)
        await slow.start()
        await quick.start()
        times = []
        try:
            for server in (slow, quick):
                t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=server.port, timeout=1.0))
                try:
                    await t.read(1, Function.HOLDING, 0, 4)  # connected
                    started = time.monotonic()
                    got = await t.read_plan(1, [(Function.HOLDING, 0, 4), (Function.HOLDING, 0, 2)])
                    times.append(time.monotonic() - started)
                    assert all(isinstance(g, bytes) for g in got)
                finally:
                    t.close()
        finally:
            await slow.stop()
            await quick.stop()
        return times[0], times[1]

    slow, quick = asyncio.run(go())
    assert slow >= 0.3  # two requests, 150 ms each
    assert quick < slow - 0.2
