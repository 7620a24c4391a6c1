"""`meter-collector demo` end to end, with Mosquitto and with the embedded broker."""

from __future__ import annotations

import pytest

from tests.conftest import cli


@pytest.mark.parametrize("broker", ["auto", "embedded"])
def test_demo_delivers_everything_through_an_uplink_cut(broker: str) -> None:
    out = cli("demo", "--duration", "14", "--outage", "3", "--broker", broker, timeout=90)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert ("Mosquitto on" in text) if broker == "auto" else ("embedded" in text)
    assert "uplink cut" in text and "uplink back" in text
    assert "(from the buffer)" in text
    assert "no gap; 0 message(s) left in the buffer" in text
    for meter in ("main-incomer", "lighting-b1", "water-main", "hvac-chiller"):
        assert f"  {meter}" in text
    assert "EVENT meter_offline" in text  # the RS-485 address nobody answers to
