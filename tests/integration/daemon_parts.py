"""The daemon as a real process, with a simulator and a site config of the test's own."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def site_config(
    folder: Path,
    *,
    mqtt_url: str | None,
    sim_port: int,
    meters: int = 5,
    interval: str = "1s",
    mqtt_extra: str = "",
    gateway: str = "gw1",
    meter_names: list[str] | None = None,
    datacenter: str = "",
) -> Path:
    """``mqtt_url`` None: no mqtt section; ``datacenter``: the datacenter section's mapping, in flow style."""
    names = meter_names or [f"m{i}" for i in range(1, meters + 1)]
    lines = [
        f"gateway: {{id: {gateway}, site: test, building: B01}}",
        f"storage: {{path: {folder / 'buffer.db'}}}",
        *([f'mqtt: {{url: "{mqtt_url}", health_interval: 2s{mqtt_extra}}}'] if mqtt_url is not None else []),
        *([f"datacenter: {datacenter}"] if datacenter else []),
        "clock: {sync_check: none}",
        "buses:",
        f"  - {{name: lan, type: tcp, host: 127.0.0.1, port: {sim_port}, timeout: 300ms}}",
        "meters:",
    ]
    for i, name in enumerate(names, start=1):
        lines.append(
            f"  - {{id: {name}, bus: lan, address: {i}, model: eastron-sdm120, interval: {interval},"
            f' category: "01A00", points: [energy_import, active_power, voltage_l1]}}'
        )
    path = folder / "site.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self.logf = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "-c", str(config)],
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.logf.close()

    def term(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.logf.close()
        return rc

    def finish(self) -> None:
        """For a test's cleanup: kill the daemon if the test did not stop it."""
        if self.proc.poll() is None:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def buffered(db: Path) -> set[int]:
    """Seqs in the buffer now, read while the daemon may be writing it: read-only, so the test
    never creates the file or holds a write lock; empty until the daemon has created its tables."""
    if not db.exists():
        return set()
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return set()
    try:
        return {r[0] for r in conn.execute("SELECT seq FROM outbox")}
    except sqlite3.OperationalError:  # no outbox table yet
        return set()
    finally:
        conn.close()


def stored(db: Path) -> tuple[set[int], str]:
    """Seqs in the buffer and its integrity check, read while no daemon runs."""
    conn = sqlite3.connect(db)
    try:
        seqs = {r[0] for r in conn.execute("SELECT seq FROM outbox")}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return seqs, integrity
    finally:
        conn.close()
