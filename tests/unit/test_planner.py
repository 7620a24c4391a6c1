"""Read planner: fewest requests, never above the limits, never across unreadable registers."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from drivers import registry
from drivers.modbus.planner import DEFAULT_GAP_SERIAL, DEFAULT_GAP_TCP, Request, plan
from drivers.model import DataType, Function, Model, Point


def model(points: list[Point], **kw: Any) -> Model:
    return Model(
        name="t-m", vendor="t", model="m", kind="electricity", protocol="modbus", manual="t", points=tuple(points), **kw
    )


def test_sdm630_seven_points_over_0x0000_0x0049_cost_at_most_three_requests() -> None:
    m = registry.load("eastron-sdm630")
    names = [
        "voltage_l1",
        "current_l1",
        "active_power_l1",
        "active_power",
        "power_factor",
        "frequency",
        "energy_import",
    ]
    assert max(m.point(n).end for n in names) <= 0x4A
    for gap in (DEFAULT_GAP_SERIAL, DEFAULT_GAP_TCP):
        requests = plan(m, m.needed_for(names), gap=gap)
        assert len(requests) <= 3, [str(r) for r in requests]
        covered = {p.name for r in requests for p, _ in r.points}
        assert covered == set(names)


def test_full_sdm630_is_four_requests_on_serial_not_thirty_two() -> None:
    m = registry.load("eastron-sdm630")
    assert len(plan(m, list(m.points), gap=DEFAULT_GAP_SERIAL)) == 4
    assert len(plan(m, list(m.points), gap=0, single=True)) == len(m.points)


def test_gap_budget_decides_merging() -> None:
    a = Point("a", 0, DataType.UINT16)
    b = Point("b", 11, DataType.UINT16)  # gap of 10 registers after a
    assert len(plan(model([a, b]), [a, b], gap=10)) == 1
    assert len(plan(model([a, b]), [a, b], gap=9)) == 2
    # The model's own budget wins when it is smaller than the bus's.
    assert len(plan(model([a, b], gap=5), [a, b], gap=10)) == 2


def test_never_above_the_model_limit_or_125() -> None:
    pts = [Point(f"p{i}", i * 2, DataType.FLOAT32) for i in range(100)]  # 200 registers, contiguous
    reqs = plan(model(pts), pts, gap=100)
    assert all(r.count <= 125 for r in reqs)
    assert len(reqs) == 2
    reqs = plan(model(pts, max_registers=40), pts, gap=100)
    assert all(r.count <= 40 for r in reqs) and len(reqs) == 5


def test_never_reads_across_unreadable_registers() -> None:
    a, b = Point("a", 0, DataType.UINT16), Point("b", 4, DataType.UINT16)
    assert len(plan(model([a, b], unreadable=((2, 2),)), [a, b], gap=50)) == 2
    assert len(plan(model([a, b], unreadable=((5, 9),)), [a, b], gap=50)) == 1


def test_functions_are_never_mixed() -> None:
    a = Point("a", 0, DataType.UINT16, function=Function.HOLDING)
    b = Point("b", 1, DataType.UINT16, function=Function.INPUT)
    reqs = plan(model([a, b]), [a, b], gap=50)
    assert [r.function for r in reqs] == [Function.HOLDING, Function.INPUT]


def test_helpers_are_planned_with_their_point() -> None:
    m = registry.load("tuf-2000m")
    names = {p.name for p in m.needed_for(["volume"])}
    assert names == {"volume", "volume_fraction", "totaliser_unit", "totaliser_multiplier"}


layouts = st.lists(
    st.tuples(
        st.integers(0, 600),
        st.sampled_from([DataType.UINT16, DataType.FLOAT32, DataType.FLOAT64]),
        st.sampled_from(list(Function)),
    ),
    min_size=1,
    max_size=40,
)


@given(
    layout=layouts,
    gap=st.integers(0, 60),
    limit=st.integers(4, 125),
    hole=st.tuples(st.integers(0, 650), st.integers(0, 20)),
)
def test_plan_properties(
    layout: list[tuple[int, DataType, Function]], gap: int, limit: int, hole: tuple[int, int]
) -> None:
    points: list[Point] = []
    used: dict[Function, set[int]] = {f: set() for f in Function}
    for i, (addr, t, fn) in enumerate(layout):
        regs = set(range(addr, addr + t.registers))
        if regs & used[fn] or (hole[0] <= addr + t.registers - 1 and addr <= hole[0] + hole[1]):
            continue
        used[fn] |= regs
        points.append(Point(f"p{i}", addr, t, function=fn))
    if not points:
        return
    unreadable = ((hole[0], hole[0] + hole[1]),)
    m = model(points, max_registers=limit, unreadable=unreadable)
    reqs = plan(m, points, gap=gap)
    seen = []
    for r in reqs:
        assert 1 <= r.count <= limit
        assert not (r.address <= hole[0] + hole[1] and hole[0] <= r.address + r.count - 1)
        for p, offset in r.points:
            assert p.function is r.function
            assert r.address + offset == p.address and offset + p.registers <= r.count
            seen.append(p.name)
    assert sorted(seen) == sorted(p.name for p in points)
    # Minimal for the rules: no two neighbouring requests could have been one.
    for r1, r2 in itertools.pairwise(reqs):
        if r1.function is not r2.function:
            continue
        merged_ok = (
            r2.address + r2.count - r1.address <= limit
            and r2.address - (r1.address + r1.count) <= gap
            and not (r1.address + r1.count <= hole[0] + hole[1] and hole[0] < r2.address)
        )
        assert not merged_ok


def test_plan_prints(tmp_path: Path) -> None:
    m = registry.load("eastron-sdm630")
    text = str(plan(m, [m.point("frequency")], gap=16)[0])
    assert text.startswith("FC04 0x0046+2") and "frequency" in text


def test_a_poll_reuses_the_plan_of_the_last_poll_of_the_same_points() -> None:
    import asyncio

    from drivers.modbus.device import read_device

    m = registry.load("eastron-sdm120")
    calls: list[tuple[int, int]] = []

    class Zeros:
        async def read(
            self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
        ) -> list[int]:
            calls.append((address, count))
            return [0] * count

    names = ["voltage_l1", "energy_import"]
    for _ in range(3):
        asyncio.run(read_device(Zeros(), 1, m, names, gap=48))
    key = ("plan", tuple(names), 48, False)
    first: list[Request] = m.derived(key, list)  # the cached plan, not a new empty one
    assert first and [(r.address, r.count) for r in first] == calls[: len(first)]
    assert calls == calls[: len(first)] * 3
    other = m.derived(("plan", ("voltage_l1",), 48, False), lambda: plan(m, m.needed_for(["voltage_l1"]), gap=48))
    assert other is not first
