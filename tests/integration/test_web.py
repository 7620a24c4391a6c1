"""The web face (collector/daemon/web.py) of a real daemon polling simulated meters, one of which does
not answer: /metrics parsed as Prometheus parses it, /api against its schemas, the status page as
headless Chromium renders it after its script ran, basic auth, and a port another process holds.

The screenshot docs/status-page.png is made by the Chromium test: set MC_UPDATE_SCREENSHOT=1 to write
it there (otherwise it goes to the test's temporary folder, so a test run leaves the tree as it was).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource

from collector.config import load_config
from tests.conftest import ROOT, Simulator, cli, free_port, need, wait_until
from tests.integration.daemon_parts import DaemonProcess, site_config
from tests.mqtt_parts import Mosquitto, Subscriber, wait_port
from tests.schemas import SCHEMAS, schema
from tests.unit.test_architecture import importers

METERS = ["m1", "m2", "m3"]  #: m3 is on a line where nothing ever answers (a meter without power)
SITE_LABEL = 'R&D "North" <annex>'  #: from the config, shown on the page: must arrive escaped
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  #: loopback: never through a proxy


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, *, auth: tuple[str, str] | None = None, timeout: float = 30) -> Answer:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with OPENER.open(request, timeout=timeout) as r:
            return Answer(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())


def api_validate(name: str, body: Any) -> None:
    """Against docs/schemas/{name}.schema.json, whose $refs name the other schemas there."""
    loaded = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))]
    registry: Registry[Any] = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in loaded)
    jsonschema.Draft202012Validator(schema(name), registry=registry).validate(body)


def web_site(folder: Path, *, mqtt_url: str, sim_port: int, web: str, silent_port: int = 0) -> Path:
    """m1 and m2 on the simulator; m3 on a bus of its own at ``silent_port``, where something accepts
    connections and never answers (the simulator's port when 0: it has no unit 3 and says so)."""
    path = site_config(folder, mqtt_url=mqtt_url, sim_port=sim_port, meter_names=METERS)
    text = path.read_text().replace("site: test", f"site: {json.dumps(SITE_LABEL)}")
    if silent_port:
        text = text.replace(
            "meters:\n",
            f"  - {{name: dark, type: tcp, host: 127.0.0.1, port: {silent_port}, timeout: 300ms}}\nmeters:\n",
        ).replace("{id: m3, bus: lan,", "{id: m3, bus: dark,")
    path.write_text(text + f"web: {web}\n")
    return path


class Silent:
    """A TCP port that accepts connections (the kernel does, into the backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]


@dataclass
class Site:
    daemon: DaemonProcess
    url: str
    folder: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One daemon for the read-only tests: 3 meters, m3 not answering, a broker, the page on loopback."""
    folder = tmp_path_factory.mktemp("web")
    (folder / "broker").mkdir()
    broker = Mosquitto(folder / "broker").start()
    sim_port = free_port()
    sim = Simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim_port}", "--ids", "1-2")
    silent = Silent()
    port = free_port()
    web = f'{{listen: "127.0.0.1:{port}"}}'
    config = web_site(
        folder, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, web=web, silent_port=silent.port
    )
    daemon = DaemonProcess(config, folder / "daemon.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 30)

        def settled() -> bool:
            meters = {m["id"]: m for m in get(f"{url}/api/meters").json()["meters"]}
            published = get(f"{url}/api/status").json()["mqtt"]["acked"]
            up = all(meters[m]["state"] == "online" and meters[m]["last_good"] for m in ("m1", "m2"))
            return up and meters["m3"]["state"] == "offline" and published > 0

        wait_until(settled, 30, "m1 and m2 read, m3 offline, readings delivered")
        yield Site(daemon, url, folder)
    finally:
        daemon.finish()
        sim.proc.kill()
        sim.proc.wait(10)
        silent.sock.close()
        broker.stop()


# --- /metrics --------------------------------------------------------------------------------------


def test_metrics_parse_and_name_every_meter_bus_and_the_buffer(site: Site) -> None:
    answer = get(f"{site.url}/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    samples = [s for f in families.values() for s in f.samples]
    for meter in METERS:
        assert any(s.labels.get("meter") == meter for s in samples), f"no sample labelled meter={meter}"
    assert any(s.labels.get("bus") == "lan" for s in samples)

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert value("meter_collector_buffer_depth") >= 0
    assert value("meter_collector_buffer_oldest_unsent_age_seconds") >= 0
    assert value("meter_collector_buffer_dropped_total") == 0
    assert value("meter_collector_writer_not_stored_total") == 0
    assert value("meter_collector_mqtt_connected") == 1
    assert value("meter_collector_mqtt_messages_acked_total") > 0
    assert value("meter_collector_clock_synchronised") == 1  # sync_check: none
    assert value("meter_collector_meter_online", meter="m1") == 1
    assert value("meter_collector_meter_online", meter="m3") == 0
    assert value("meter_collector_meter_polls_total", meter="m1") > 0
    assert value("meter_collector_meter_failures_total", meter="m3") > 0
    assert value("meter_collector_meter_last_success_timestamp_seconds", meter="m1") > 1.7e9
    assert not [
        s
        for s in samples
        if s.name == "meter_collector_meter_last_success_timestamp_seconds" and s.labels["meter"] == "m3"
    ]
    assert value("meter_collector_bus_transactions_total", bus="lan") > 0
    assert value("meter_collector_bus_timeouts_total", bus="dark") > 0
    assert value("meter_collector_bus_garbled_total", bus="dark") == 0  # silence is not noise
    assert value("meter_collector_bus_failed_polls_total", bus="dark") > 0
    assert value("meter_collector_bus_failed_polls_total", bus="lan") == 0
    # Prometheus naming: counters end in _total, durations are in seconds.
    for f in families.values():
        assert f.name.startswith("meter_collector_")
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name


# --- /api ------------------------------------------------------------------------------------------


def test_api_answers_match_their_schemas(site: Site) -> None:
    status = get(f"{site.url}/api/status")
    assert status.status == 200 and status.headers["Content-Type"].startswith("application/json")
    body = status.json()
    api_validate("api-status", body)
    assert set(body["latest"]) == set(METERS)
    assert body["latest"]["m1"]["values"]["voltage_l1"] > 0
    assert body["latest"]["m3"]["failure"] and body["meters"]["m3"]["online"] is False
    raw = get(f"{site.url}/api/status?raw=1").json()
    api_validate("api-status", raw)
    assert raw["latest"]["m1"]["registers"]["voltage_l1"]

    meters = get(f"{site.url}/api/meters").json()
    api_validate("api-meters", meters)
    assert [m["id"] for m in meters["meters"]] == METERS
    m3 = meters["meters"][2]
    assert m3["state"] == "offline" and m3["offline_since"] and "unit 3" in m3["last_error"]
    assert m3["bus"] == "dark" and m3["address"] == 3 and m3["category"] == "01A00"

    one = get(f"{site.url}/api/meters/m1")
    assert one.status == 200
    api_validate("api-meter", one.json())
    assert one.json()["latest"]["meter"] == "m1" and one.json()["health"]["good"] > 0
    assert get(f"{site.url}/api/meters/nope").status == 404

    fresh = get(f"{site.url}/api/read?meter=m2&raw=1")
    assert fresh.status == 200, fresh.body
    api_validate("api-read", fresh.json())
    (reading,) = fresh.json()["readings"]
    assert reading["meter"] == "m2" and reading["quality"] == "good" and reading["registers"]
    dead = get(f"{site.url}/api/read?meter=m3")
    api_validate("api-read", dead.json())
    assert dead.json()["readings"][0]["failure"]
    for url, code in ((f"{site.url}/api/read", 400), (f"{site.url}/api/read?meter=nope", 404)):
        answer = get(url)
        assert answer.status == code
        api_validate("api-read", answer.json())


def test_fresh_reads_go_one_at_a_time(site: Site) -> None:
    """A second read while one runs is answered 429 at once, not queued behind it on the bus."""
    # m3 does not answer: its read takes its bus's timeout and retry (2 x 300 ms), long enough to overlap.
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, f"{site.url}/api/read?meter=m3")
        answers: list[Answer] = []
        while not slow.done() and not any(a.status == 429 for a in answers):
            answers.append(get(f"{site.url}/api/read?meter=m1"))
        answers.append(slow.result())  # 429 too when the m1 read got the bus first
    assert {a.status for a in answers} == {200, 429}, [a.status for a in answers]
    busy = [a for a in answers if a.status == 429]
    assert busy[0].headers["Retry-After"] and "another read" in busy[0].json()["error"]
    api_validate("api-read", busy[0].json())


# --- the page --------------------------------------------------------------------------------------


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            need("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def card(dom: str, meter: str) -> str:
    found = re.search(rf'<article [^>]*data-meter="{meter}".*?</article>', dom, re.S)
    assert found, f"no card for {meter}"
    return found.group(0)


def test_the_status_page_in_headless_chromium(site: Site, tmp_path: Path) -> None:
    # The virtual time budget lets the page's script refresh its live part (every 5 s) before the dump.
    done = chromium("--virtual-time-budget=12000", "--dump-dom", f"{site.url}/", profile=tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    body = re.search(r"<body[^>]*>", dom)
    refreshes = re.search(r'data-refreshes="(\d+)"', body.group(0) if body else "")
    assert refreshes and int(refreshes.group(1)) >= 1, "the page's script did not refresh it"
    assert body and 'data-lost="0"' in body.group(0), "the page lost the gateway"
    for meter in ("m1", "m2"):
        c = card(dom, meter)
        assert 'data-state="online"' in c and ">OK<" in c
        for point, unit in (("voltage_l1", "V"), ("active_power", "kW"), ("energy_import", "kWh")):
            row = re.search(
                rf'<tr data-point="{point}"><th>{point}</th><td class="num">([0-9.e+-]+)</td>'
                rf'<td class="unit">{unit}</td>',
                c,
            )
            assert row and float(row.group(1)) > 0, (meter, point, c)
    dead = card(dom, "m3")
    assert 'data-state="offline"' in dead and ">OFFLINE<" in dead
    assert re.search(r"OFFLINE since \d\d:\d\d:\d\d — no reply from unit 3\b", dead), dead
    assert "not answering: m3" in dom
    # What the config says is text, never markup.
    assert 'R&amp;D "North" &lt;annex&gt;' in dom and "<annex>" not in dom

    raw = chromium("--virtual-time-budget=2000", "--dump-dom", f"{site.url}/?raw=1", profile=tmp_path / "profile")
    assert raw.returncode == 0 and '<td class="mono">' in card(raw.stdout, "m1")

    shot = ROOT / "docs" / "status-page.png" if os.environ.get("MC_UPDATE_SCREENSHOT") else tmp_path / "page.png"
    done = chromium(
        "--virtual-time-budget=6000",
        "--window-size=412,900",
        f"--screenshot={shot}",
        f"{site.url}/",
        profile=tmp_path / "profile",
    )
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]


def test_the_page_is_self_contained(site: Site) -> None:
    """No CDN, no external resource: a gateway on a site network often has no internet."""
    page = get(f"{site.url}/")
    assert page.status == 200
    text = page.body.decode()
    assert 'name="viewport"' in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    assert get(f"{site.url}/?part=1").body.decode().count("<article") == len(METERS)


# --- passwords -------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.5:8080", "localhost:8080", "[::1]:8080"])
def test_loopback_needs_no_password(tmp_path: Path, listen: str) -> None:
    path = web_site(tmp_path, mqtt_url="mqtt://127.0.0.1:1883", sim_port=502, web=f'{{listen: "{listen}"}}')
    web = load_config(path).web
    assert web is not None and web.port == 8080 and web.password_file is None and web.username == "admin"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", ":8080", "192.168.10.5:8080", "[::]:8080", "gw1.local:8080"])
def test_check_refuses_a_network_address_without_a_password(tmp_path: Path, listen: str) -> None:
    path = web_site(tmp_path, mqtt_url="mqtt://127.0.0.1:1883", sim_port=502, web=f'{{listen: "{listen}"}}')
    done = cli("check", "-c", str(path))
    assert done.returncode == 2
    line = len(path.read_text().splitlines())
    assert f"{path}:{line} web.listen: {listen} is reachable from other machines: set web.password_file" in done.stderr
    secret = tmp_path / "web.secret"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    web = f'{{listen: "{listen}", password_file: {secret}}}'
    config = load_config(web_site(tmp_path, mqtt_url="mqtt://127.0.0.1:1883", sim_port=502, web=web))
    assert config.web is not None and config.web.password_file == str(secret)


def test_basic_auth(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> None:
    sim_port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim_port}", "--ids", "1-2")
    secret = tmp_path / "web.secret"
    secret.write_text("s3cret-Passw0rd\n")
    secret.chmod(0o600)
    port = free_port()
    web = f'{{listen: "127.0.0.1:{port}", username: tech, password_file: {secret}}}'
    config = web_site(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, web=web)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 30)
        for path in ("/", "/metrics", "/api/status", "/api/read?meter=m1"):
            nobody = get(url + path)
            assert nobody.status == 401 and nobody.headers["WWW-Authenticate"].startswith("Basic realm=")
            assert get(url + path, auth=("tech", "wrong")).status == 401
            assert get(url + path, auth=("admin", "s3cret-Passw0rd")).status == 401
            assert get(url + path, auth=("tech", "s3cret-Passw0rd\n")).status == 401
        assert get(url + "/", auth=("tech", "s3cret-Passw0rd")).status == 200
        assert get(url + "/metrics", auth=("tech", "s3cret-Passw0rd")).status == 200
        assert get(url + "/api/meters", auth=("tech", "s3cret-Passw0rd")).status == 200
        garbage = urllib.request.Request(url + "/", headers={"Authorization": "Basic %%%not-base64"})
        with pytest.raises(urllib.error.HTTPError) as err:
            OPENER.open(garbage, timeout=10)
        assert err.value.code == 401
        wait_until(lambda: "wrong user name or password" in d.log(), 10, "the wrong password logged")
        assert d.term() == 0
    finally:
        d.finish()
    log = d.log()
    assert "s3cret" not in log
    assert log.count("wrong user name or password") == 1  # at most once a minute


# --- a port taken ----------------------------------------------------------------------------------


def test_a_port_taken_by_another_process_is_logged_once_and_the_daemon_goes_on(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    sim_port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim_port}", "--ids", "1-2")
    port = free_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
            "print('listening', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    sub = Subscriber(broker.port, "meters/gw1/#")
    d: DaemonProcess | None = None
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 30)
        assert ready and holder.stdout.readline().strip() == "listening"
        web = f'{{listen: "127.0.0.1:{port}"}}'
        config = web_site(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, web=web)
        d = DaemonProcess(config, tmp_path / "daemon.log")
        daemon = d
        wait_until(lambda: "address already in use" in daemon.log(), 30, "the taken port in the log")
        seen = len(sub.json("/reading"))
        sub.wait_for(lambda: len({r["seq"] for r in sub.json("/reading")}) >= seen + 6, 30, "6 more readings")
        assert d.proc.poll() is None
        assert d.term() == 0
    finally:
        if d is not None:
            d.finish()
        sub.close()
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    log = d.log()
    assert log.count(f"web.listen 127.0.0.1:{port}: address already in use") == 1, log
    assert "Traceback" not in log


def test_aiohttp_and_prometheus_client_behind_one_module() -> None:
    assert importers("aiohttp") == {"collector/daemon/web.py"}
    assert importers("prometheus_client") == {"collector/daemon/web.py"}
