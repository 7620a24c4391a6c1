"""What the integration tests share: a Mosquitto of their own, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_parts import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()
