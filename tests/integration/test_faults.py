"""Faults a gateway meets when nobody watches it, each with the real thing: a full tmpfs, a broker that
hangs up before CONNACK, a long outage under a small max_size, a broker that comes back, a reload
naming a file that is not there."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.daemon.buffer import Buffer
from collector.daemon.records import Record
from tests.conftest import Simulator, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, site_config, stored
from tests.mqtt_parts import Mosquitto, Proxy, Subscriber
from tests.schemas import validate


def sdm120s(simulator: type[Simulator], n: int) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def slot_ts(reading: dict[str, object]) -> float:
    return datetime.fromisoformat(str(reading["slot"]).replace("Z", "+00:00")).timestamp()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs of our own: a disk that can really fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system says it is full."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_is_said_and_survived(
    tmp_path: Path, small_disk: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    sim_port = sdm120s(simulator, 5)
    proxy = Proxy(broker.port)
    proxy.cut()  # the broker is unreachable while the disk fills
    cfg = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "buffer.db"), str(small_disk / "buffer.db")))
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    sub = Subscriber(broker.port, "meters/gw1/#")
    filler: Path | None = None
    try:
        wait_until(lambda: "meter-collector running" in daemon.log(), 30, "the daemon to start")
        wait_until(lambda: (small_disk / "buffer.db").exists(), 20, "the buffer")
        filler = fill(small_disk)
        wait_until(lambda: "buffer disk full" in daemon.log(), 30, "the disk-full log line")
        time.sleep(0.1)
        assert daemon.proc.poll() is None
        full_line = next(line for line in daemon.log().splitlines() if "buffer disk full" in line)
        assert "reading(s) waiting" in full_line and "kB free" in full_line
        full_at = time.time()
        # While the disk stays full, polling goes on into the bounded queue, and the log says
        # nothing more about it (one line per episode).
        time.sleep(5)
        assert daemon.proc.poll() is None
        filler.unlink()
        filler = None
        freed = time.time()
        proxy.restore()
        wait_until(lambda: "buffer writes again" in daemon.log(), 60, "the buffer to be written again")
        wait_until(
            lambda: any(slot_ts(r) > freed for r in sub.json("/reading")),
            60,
            "fresh readings after space returned",
        )
        assert daemon.proc.poll() is None
        assert daemon.log().count("buffer disk full") == 1
        assert "Traceback" not in daemon.log()
        # What was read while the disk was full was kept in memory and stored after: nothing lost.
        wait_until(
            lambda: any(full_at + 1 < slot_ts(r) < freed - 1 for r in sub.json("/reading")),
            30,
            "readings of the full disk",
        )
        seqs = sorted(set(sub.seqs()))
        assert seqs == list(range(1, seqs[-1] + 1))
    finally:
        if filler is not None:
            filler.unlink()
        daemon.finish()
        proxy.close()
        sub.close()


def named_by(reports: list[dict[str, object]]) -> set[int]:
    out: set[int] = set()
    for r in reports:
        for a, b in r["ranges"]:  # type: ignore[attr-defined]
            out.update(range(a, b + 1))
    return out


def test_every_seq_the_platform_misses_is_named_after_a_long_outage(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    # A long outage, compressed: the buffer starts nearly at its 1 MB limit, and 20 meters push it
    # over again and again while the broker is away.
    db = tmp_path / "buffer.db"
    b = Buffer(db)
    old = datetime.now(UTC) - timedelta(hours=2)
    b.append([Record("m1", old, old, {f"p{i}": float(i) for i in range(30)}) for _ in range(3200)])
    b.close()
    sim_port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{sim_port}", "--ids", "1-20")
    proxy = Proxy(broker.port)
    proxy.cut()
    cfg = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port, meters=20)
    text = cfg.read_text().replace("eastron-sdm120", "eastron-sdm630")
    text = text.replace(", points: [energy_import, active_power, voltage_l1]", "")
    text = text.replace(f"storage: {{path: {db}}}", f"storage: {{path: {db}, max_size: 1MB}}")
    cfg.write_text(text)
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    sub = Subscriber(broker.port, "meters/gw1/#")
    try:
        wait_until(lambda: daemon.log().count("buffer retention (max_size)") >= 4, 90, "four retention passes")
        proxy.restore()

        def delivered() -> bool:
            stats = json.loads(subprocess.check_output(daemon_cli("buffer", "stats", "--json", "-c", str(cfg))))
            return bool(stats["depth"] <= 25)

        wait_until(delivered, 60, "the backlog to drain")
        assert daemon.term() == 0
    finally:
        daemon.finish()
        proxy.close()
    sub.wait_for(lambda: bool(sub.json("/events")), 10, "events")
    time.sleep(0)  # nothing more is asserted about timing
    events = sub.json("/events")
    reports = [e for e in events if e["event"] == "data_dropped"]
    received = set(sub.seqs())
    sub.close()
    assert reports, "no data_dropped event reached the platform"
    for r in reports:
        validate("meters/gw1/events", r)
    named = named_by(reports)
    # What the stop's 3 s drain did not get acknowledged (a busy machine) is still stored, sent at the
    # next start: not lost. Rows go out oldest first but with a share of fresh ones, so such a row can
    # sit below the highest seq received.
    kept, integrity = stored(db)
    assert integrity == "ok"
    top = max(received | named)
    missing = set(range(1, top + 1)) - received - named - kept
    assert not missing, sorted(missing)[:20]
    # A drop report that was replaced by a later one is itself named, and nothing received is named.
    assert not (received - {r["seq"] for r in reports}) & named


def daemon_cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "collector.cli", *args]


class NotABroker:
    """A TCP listener that accepts a connection and never answers CONNECT: with ``hang_up`` it reads
    the CONNECT and closes (MQTT 5 against a 3.1.1-only broker, a proxy); without, it keeps the
    connection open and silent (a port that is not an MQTT broker's)."""

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if not self.hang_up:
                self.conns.append(conn)
                continue
            with contextlib.suppress(OSError):
                conn.recv(1024)  # the CONNECT
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.mark.parametrize(
    ("hang_up", "said", "attempts"),
    [(True, "before answering CONNECT", 4), (False, "no answer to CONNECT", 3)],
    ids=["hangs-up", "silent"],
)
def test_a_port_that_is_not_a_broker_is_named_once(
    tmp_path: Path, simulator: type[Simulator], hang_up: bool, said: str, attempts: int
) -> None:
    sim_port = sdm120s(simulator, 1)
    peer = NotABroker(hang_up=hang_up)
    daemon = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{peer.port}", sim_port=sim_port, meters=1),
        tmp_path / "daemon.log",
    )
    try:
        wait_until(lambda: said in daemon.log(), 40, f'"{said}" in the log')
        line = next(x for x in daemon.log().splitlines() if said in x)
        assert f"127.0.0.1:{peer.port}" in line
        if hang_up:
            assert 'protocol: "3.1.1"' in line
        # Logged once, though it is retried every few seconds, and as what it is.
        wait_until(lambda: peer.accepted >= attempts, 60, f"{attempts} attempts")
        log = daemon.log()
        assert log.count(said) == 1
        other = "no answer to CONNECT" if hang_up else "before answering CONNECT"
        assert other not in log
    finally:
        daemon.finish()
        peer.close()


def test_the_first_buffered_reading_arrives_within_8_s_of_the_brokers_return(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    sim_port = sdm120s(simulator, 2)
    proxy = Proxy(broker.port)
    sub = Subscriber(broker.port, "meters/gw1/#")
    daemon = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port, meters=2),
        tmp_path / "daemon.log",
    )
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 30, "readings before the outage")
        proxy.cut()
        cut = time.time()
        # Long enough for the reconnect delay to reach its cap (1, 2, 4, 5, 5 ... s: 12 s, jittered).
        time.sleep(18)
        proxy.restore()
        back = time.monotonic()
        wait_until(
            lambda: any(cut + 1 < slot_ts(r) < cut + 17 for r in sub.json("/reading")),
            20,
            "a reading buffered during the outage",
        )
        took = time.monotonic() - back
        assert took <= 8, f"the first buffered reading came {took:.1f} s after the broker was back"
    finally:
        daemon.finish()
        proxy.close()
        sub.close()


SECRET = "s3cret-pass"


def secured_site(
    tmp_path: Path, simulator: type[Simulator], meters: int, *, acl: str | None = None
) -> tuple[Mosquitto, Path, Path]:
    """A broker with users gw1 (the daemon, password in a file) and platform, and a site config."""
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", users={"gw1": SECRET, "platform": "p"}, acl=acl).start()
    secret = tmp_path / "mqtt.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg = site_config(
        tmp_path,
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        sim_port=sdm120s(simulator, meters),
        meters=meters,
        mqtt_extra=f", username: gw1, password_file: {secret}",
    )
    return broker, cfg, secret


def test_a_reload_naming_a_missing_password_file_is_refused_and_delivery_goes_on(
    tmp_path: Path, simulator: type[Simulator]
) -> None:
    broker, cfg, secret = secured_site(tmp_path, simulator, 1)
    sub = Subscriber(broker.port, "meters/gw1/#", auth=("platform", "p"))
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 30, "readings")
        cfg.write_text(cfg.read_text().replace(str(secret), str(tmp_path / "gone.secret")))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in daemon.log(), 20, "the refusal")
        refused = time.time()
        sub.wait_for(
            lambda: any(slot_ts(r) > refused + 1 for r in sub.json("/reading")), 20, "readings after the refusal"
        )
        assert daemon.proc.poll() is None
        log = daemon.log()
        assert "gone.secret" in log and SECRET not in log
    finally:
        daemon.finish()
        sub.close()
        broker.stop()


def test_rows_refused_by_the_acl_go_out_once_it_is_fixed_without_a_reconnect(
    tmp_path: Path, simulator: type[Simulator]
) -> None:
    acl = "user gw1\ntopic readwrite meters/gw1/#\ntopic deny meters/gw1/meters/m2/#\nuser platform\ntopic read #\n"
    broker, cfg, _ = secured_site(tmp_path, simulator, 2, acl=acl)
    sub = Subscriber(broker.port, "meters/gw1/#", auth=("platform", "p"))
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        wait_until(lambda: "broker refused seq" in daemon.log(), 30, "a refused publish")
        sub.wait_for(lambda: any(h["mqtt"]["rejected"] >= 3 for h in sub.json("/health")), 30, "three refused rows")
        assert not [r for r in sub.json("/reading") if r["meter"] == "m2"]
        (tmp_path / "broker" / "acl").write_text(acl.replace("topic deny meters/gw1/meters/m2/#\n", ""))
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads its ACL; the session stays up
        fixed = time.time()
        sub.wait_for(
            lambda: any(r["meter"] == "m2" and slot_ts(r) < fixed - 1 for r in sub.json("/reading")),
            45,
            "the rows refused before the fix",
        )
        assert daemon.log().count("MQTT connected") == 1
    finally:
        daemon.finish()
        sub.close()
        broker.stop()


def test_a_corrupt_buffer_is_moved_aside_and_the_daemon_goes_on(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    db = tmp_path / "buffer.db"
    b = Buffer(db)
    b.append([Record("m1", datetime.now(UTC), datetime.now(UTC), {"x": 1.0}) for _ in range(50)])
    b.close()
    db.write_bytes(b"\x00garbage, as a card that lost power may leave it" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    sim_port = sdm120s(simulator, 1)
    sub = Subscriber(broker.port, "meters/gw1/#")
    daemon = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, meters=1),
        tmp_path / "daemon.log",
    )
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 30, "readings from the new buffer")
        sub.wait_for(lambda: bool(sub.json("/events")), 10, "the drop report")
    finally:
        daemon.finish()
        sub.close()
    report = next(e for e in sub.json("/events") if e["event"] == "data_dropped")
    validate("meters/gw1/events", report)
    assert report["reason"] == "buffer_corrupt" and report["first_seq"] is None and report["last_seq"] >= 50
    assert min(r["seq"] for r in sub.json("/reading")) > report["last_seq"]  # never taken for duplicates
    aside = list(tmp_path.glob("buffer.db.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [report["moved_to"].split("/")[-1]]
    log = daemon.log()
    assert "is corrupt" in log and "CRITICAL" in log and "Traceback" not in log
