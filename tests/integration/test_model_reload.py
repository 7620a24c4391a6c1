"""A site's own model file, edited while the daemon runs, is read again on SIGHUP.

Only the process boundary and drivers/: the daemon and the simulator are processes, the site model
is a file the test edits, and what the daemon read is what the platform receives over MQTT.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from drivers import registry
from tests.conftest import Simulator, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, site_config
from tests.mqtt_parts import Mosquitto, Subscriber

BUILTIN = registry.MODELS_DIR / "electricity" / "eastron-sdm120.yaml"


def without_frequency(text: str) -> str:
    """The SDM120 model without its frequency point (and probing voltage instead)."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith("- {name: frequency,")]
    assert len(kept) == len(lines) - 1 and "probe: frequency\n" in text, "the SDM120 model changed; update the test"
    return "".join(kept).replace("probe: frequency\n", "probe: voltage_l1\n")


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the config site_config wrote; update the test"
    return text.replace(old, new)


def test_an_edited_site_model_file_is_loaded_again(tmp_path: Path) -> None:
    full = BUILTIN.read_text()
    site = tmp_path / "models" / "site-meter.yaml"
    site.parent.mkdir()
    site.write_text(without_frequency(full))
    first = registry.load(str(site))
    assert "frequency" not in {p.name for p in first.points}
    assert registry.load(str(site)) is first  # unchanged: the cached model

    site.write_text(full)
    second = registry.load(str(site))
    assert second.point("frequency").unit == "Hz"
    # The same file by a relative reference is the same cache entry, up to date too.
    assert registry.load("models/site-meter.yaml", tmp_path) is second

    # An edit that keeps the size is seen by its modification time.
    same_size = full.replace("manual: 'Eastron ", "manual: 'EASTRON ")
    assert same_size != full and len(same_size) == len(full)
    site.write_text(same_size)
    st = site.stat()
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert registry.load(str(site)).manual.startswith("EASTRON ")


def readings(sub: Subscriber) -> list[dict[str, Any]]:
    return [r for r in sub.json("/reading") if r["meter"] == "m1" and r["quality"] != "bad"]


def test_sighup_reads_an_edited_site_model_file_again(tmp_path: Path, simulator: type[Simulator]) -> None:
    port = free_port()
    # The simulator serves the built-in model, frequency included.
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", "1")
    full = BUILTIN.read_text()
    site_model = tmp_path / "site-meter.yaml"
    site_model.write_text(without_frequency(full))

    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=port, meters=1)
    text = replaced(config.read_text(), "model: eastron-sdm120,", f'model: "{site_model}",')
    # No `points:` on the meter: it publishes every point its model has.
    config.write_text(replaced(text, ", points: [energy_import, active_power, voltage_l1]", ""))

    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        before = wait_until(lambda: readings(sub)[2:], 30, "3 readings of m1 on the site model")
        assert all("voltage_l1" in r["values"] and "frequency" not in r["values"] for r in before), before

        site_model.write_text(full)
        d.proc.send_signal(signal.SIGHUP)
        after = wait_until(
            lambda: [r for r in readings(sub) if "frequency" in r["values"]],
            30,
            "a reading of m1 with frequency after the site model got it back and SIGHUP",
        )
        assert 45 < after[0]["values"]["frequency"] < 65, after[0]
        assert d.proc.poll() is None
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
        broker.stop()
    log = d.log()
    assert "reloading" in log and "reload refused" not in log, log
