"""`meter-collector demo` end to end, with Mosquitto."""

from __future__ import annotations

from tests.conftest import cli

# The demo runs on its own fixed schedule (the uplink is cut at a third of --duration, for --outage
# seconds) and marks a reading "(from the buffer)" when it arrives more than 3 s after it was read
# (collector/simulator/demo.py). It polls every 2 s, so a reading is taken in the first 2 s of the cut; it cannot
# arrive before the uplink is back, so it is at least outage - 2 s late, whatever the reconnect policy.
# With --outage 3 that was 1 s, and whether any reading was 3 s late depended on where the cut fell
# between two polls and on whether a reconnect attempt came just before or just after the restore
# (seen both ways: 9 readings marked, or none). With --outage 7 the first reading of the cut is at
# least 5 s late; --duration 21 leaves 7 s after the restore for the reconnect (attempts at most 5 s
# apart, collector/daemon/publisher.py) and the delivery, before the daemon's 3 s drain on stop.
DEMO = ("demo", "--duration", "21", "--outage", "7")


def test_demo_delivers_everything_through_an_uplink_cut() -> None:
    out = cli(*DEMO, timeout=90)
    text = out.stdout
    context = text[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, context
    assert "Mosquitto on" in text, context
    assert "uplink cut" in text and "uplink back" in text, context
    assert "(from the buffer)" in text, context
    assert "no gap; 0 message(s) left in the buffer" in text, context
    for meter in ("main-incomer", "lighting-b1", "water-main", "hvac-chiller"):
        assert f"  {meter}" in text, context
    assert "EVENT meter_offline" in text, context  # the RS-485 address nobody answers to
