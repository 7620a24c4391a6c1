"""The unit file: Type=notify, watchdog, a static user in dialout, and a hardening score <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need

UNIT = Path(__file__).parents[2] / "systemd" / "meter-collector.service"


def test_unit_settings() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "User=meter-collector",
        "SupplementaryGroups=dialout",
        "StateDirectory=meter-collector",
        "ConfigurationDirectory=meter-collector",
        "DeviceAllow=char-ttyUSB rw",
        "ExecReload=",
    ):
        assert line in text, line
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "PrivateDevices=yes" not in settings  # it would hide the serial ports
    sysusers = (UNIT.parent / "meter-collector.sysusers").read_text()
    assert "m meter-collector dialout" in sysusers


def test_hardening_scores_at_most_2() -> None:
    exe = shutil.which("systemd-analyze") or need("systemd-analyze")
    out = subprocess.run([exe, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for meter-collector\.service: ([\d.]+)", out.stdout)
    if m is None:
        pytest.fail(out.stdout[-2000:] + out.stderr)
    assert float(m.group(1)) <= 2.0, out.stdout[-3000:]
