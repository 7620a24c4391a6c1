"""tests/uplink/datacenter.py as the daemon's data centre: in a thread of the test process, with
its own event loop, so that a synchronous test can take it away and bring it back."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from collector.uplink.messages import Common, Message
from collector.uplink.variant import Variant
from tests.uplink.datacenter import DataCenter, Record

KEY = b"0000000000123456"
BUILDING, GATEWAY = "330100A001", "01"
T = TypeVar("T")


class DataCenterThread:
    def __init__(self, login_key: bytes = KEY, variant: Variant | None = None, **options: Any) -> None:
        """``login_key``: the MD5 login key it expects (its AES key is KEY)."""
        self.dc = DataCenter(variant or Variant(), login_key, KEY, time=datetime.now(), **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="datacenter", daemon=True)
        self.thread.start()
        self.port = self._call(self.dc.start())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def away(self) -> None:
        """Stop listening and close every connection: the data centre is gone."""
        self._call(self.dc.stop())

    def back(self) -> None:
        self._call(self.dc.start(self.port))

    def push(self, message: Message) -> None:
        self._call(self.dc.push(message, Common(BUILDING, GATEWAY)))

    def records(self) -> list[Record]:
        return list(self.dc.records)

    def close(self) -> None:
        self.away()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def section(port: int, key_file: Path, *, period: str = "2s", extra: str = "") -> str:
    """The datacenter section of a test site config (flow style)."""
    return (
        f'{{url: "tcp://127.0.0.1:{port}", building_id: "{BUILDING}", gateway_id: "{GATEWAY}", '
        f"key_file: {key_file}, period: {period}, heartbeat: 2s{extra}}}"
    )


def key_file(folder: Path, key: bytes = KEY) -> Path:
    path = folder / "datacenter.key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return path


def waiting_for_datacenter(db: Path) -> list[tuple[int, str, int]]:
    """(seq, meter, slot) of the buffer's rows the data centre still needs, read-only."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return [
            (int(seq), str(meter), int(slot))
            for seq, meter, slot in conn.execute(
                "SELECT seq, meters.name, ts / 1000 - slot FROM outbox JOIN meters ON meters.id = outbox.meter "
                "WHERE pending & 2 ORDER BY seq"
            )
        ]
    except sqlite3.OperationalError:  # no tables yet
        return []
    finally:
        conn.close()
