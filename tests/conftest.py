"""Shared fixtures: real parts only (socat pty pairs, simulator processes, free loopback ports)."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class _Polls(Generic[T]):
    """Iterating calls ``predicate`` until it returns something true (kept in ``result``), and
    fails after ``timeout`` seconds; the caller sleeps between steps, blocking or not."""

    def __init__(self, predicate: Callable[[], T], timeout: float, what: str) -> None:
        self.predicate, self.timeout, self.what = predicate, timeout, what

    def __iter__(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        while not (result := self.predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {self.timeout:g} s waiting for {self.what}")
            yield
        self.result = result


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout``
    seconds. Tests wait for a condition with a deadline, never for a fixed time: a ``sleep`` followed
    by an assert tests the machine's load, not the code."""
    polls = _Polls(predicate, timeout, what)
    for _ in polls:
        time.sleep(interval)
    return polls.result


async def wait_until_async(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """``wait_until`` inside an event loop: polls without blocking it (the code under test runs there)."""
    polls = _Polls(predicate, timeout, what)
    for _ in polls:
        await asyncio.sleep(interval)
    return polls.result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need(tool: str) -> str:
    """The path of a tool the test needs. In CI a missing tool is a failure, not a skip: the test
    command installs it, so its absence means the install step is broken."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; the test command must install it")
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    return path


class PtyPair:
    """Two linked serial devices from socat: a and b. ``stop()`` removes them (an unplugged adapter)."""

    def __init__(self, folder: Path) -> None:
        self.a = str(folder / "ttyA")
        self.b = str(folder / "ttyB")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        need("socat")
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None
        deadline = time.monotonic() + 5
        while (os.path.lexists(self.a) or os.path.lexists(self.b)) and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.stop()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


class Simulator:
    """`meter-collector simulate` in its own process."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "simulate", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        # The banner is the simulator's first line; wait for it with a deadline, not forever.
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else "(no banner within 30 s)\n"
        if "simulating" not in line:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"simulator did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.banner = line

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return out


@pytest.fixture
def simulator() -> Iterator[type[Simulator]]:
    started: list[Simulator] = []

    class Tracked(Simulator):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
