"""A meter's plan read over Modbus TCP as one chain (ModbusTransport.read_plan): each request goes out
from the reply handler of the one before. What it must keep from one request at a time: every reply
lands with its own request, an exception reply fails its request alone, a silent meter costs one
timeout per attempt and ends the plan, a lost link ends it and is reopened at the next read, and a
stray frame (a late reply to an earlier transaction) is passed over. Real TCP peers (RawPeer)."""

from __future__ import annotations

import asyncio
import struct
import time

from drivers.errors import ExceptionReply, NoReply, NotConnected
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function
from tests.integration.test_wire_faults import RawPeer, mbap

PLAN = [(Function.INPUT, 0, 2), (Function.INPUT, 100, 3), (Function.HOLDING, 200, 1)]


def words(address: int, count: int) -> list[int]:
    return [address + i for i in range(count)]  # each register holds its own address: replies tell apart


def reply(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words(address, count)))


def expected(address: int, count: int) -> bytes:
    return struct.pack(f">{count}H", *words(address, count))


def transport(peer: RawPeer, **kw: object) -> ModbusTransport:
    return ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=peer.port, **kw))  # type: ignore[arg-type]


def test_each_reply_of_a_chain_lands_with_its_request_and_a_stray_frame_is_passed_over() -> None:
    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
        stray = reply((tid - 1) & 0xFFFF, unit, fc, 999, count) if address == 100 else b""
        return stray + reply(tid, unit, fc, address, count)  # a late reply first, then the real one

    async def go(peer: RawPeer) -> None:
        t = transport(peer, timeout=1.0, retries=0)
        try:
            for _ in range(3):
                got = await t.read_plan(1, PLAN)
                assert got == [expected(a, c) for _, a, c in PLAN]
            assert t.requests == 9 and t.timeouts == 0
        finally:
            t.close()

    with RawPeer(answer) as peer:
        asyncio.run(go(peer))
        assert peer.requests == 9 and peer.connections == 1


def test_an_exception_reply_fails_its_request_alone_and_the_chain_goes_on() -> None:
    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
        if address == 100:
            return mbap(tid, unit, bytes([fc | 0x80, 2]))  # illegal data address
        return reply(tid, unit, fc, address, count)

    async def go(peer: RawPeer) -> None:
        t = transport(peer, timeout=1.0, retries=1)
        try:
            first, second, third = await t.read_plan(1, PLAN)
            assert first == expected(0, 2) and third == expected(200, 1)
            assert isinstance(second, ExceptionReply) and second.code == 2
            assert t.timeouts == 0
        finally:
            t.close()

    with RawPeer(answer) as peer:
        asyncio.run(go(peer))
        assert peer.requests == 3  # an exception reply is an answer: not retried


def test_a_silent_request_costs_one_timeout_per_attempt_and_ends_the_plan() -> None:
    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
        return b"" if address == 100 else reply(tid, unit, fc, address, count)

    async def go(peer: RawPeer) -> float:
        t = transport(peer, timeout=0.3, retries=1)
        try:
            started = time.monotonic()
            got = await t.read_plan(1, PLAN)
            took = time.monotonic() - started
            assert len(got) == 2 and got[0] == expected(0, 2)
            assert isinstance(got[1], NoReply) and "no reply from unit 1 in 300 ms" in str(got[1])
            assert t.timeouts == 2 and t.requests == 3  # the chain's attempt and one retry, then the plan ends
            return took
        finally:
            t.close()

    with RawPeer(answer) as peer:
        took = asyncio.run(go(peer))
        assert peer.requests == 3  # the request after the silent one is never sent
    assert took >= 0.6  # two whole timeouts, not one cut short


def test_a_meter_already_down_costs_one_timeout_for_the_whole_plan() -> None:
    async def go(peer: RawPeer) -> None:
        t = transport(peer, timeout=0.3, retries=2)
        try:
            got = await t.read_plan(1, PLAN, retries=0)
            assert len(got) == 1 and isinstance(got[0], NoReply)
        finally:
            t.close()

    with RawPeer(lambda *_: b"") as peer:
        asyncio.run(go(peer))
        assert peer.requests == 1


def test_a_link_lost_in_the_middle_ends_the_plan_and_the_next_read_reopens_it() -> None:
    hang_up = [True]

    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes | None:
        if address == 100 and hang_up[0]:
            hang_up[0] = False
            return None  # the peer closes the connection instead of answering
        return reply(tid, unit, fc, address, count)

    async def go(peer: RawPeer) -> None:
        t = transport(peer, timeout=1.0, retries=1)
        try:
            got = await t.read_plan(1, PLAN)
            assert len(got) == 2 and got[0] == expected(0, 2) and isinstance(got[1], NotConnected)
            assert await t.read_plan(1, PLAN) == [expected(a, c) for _, a, c in PLAN]
        finally:
            t.close()

    with RawPeer(answer) as peer:
        asyncio.run(go(peer))
        assert peer.connections == 2
