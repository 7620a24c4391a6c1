"""CT/PT ratios scale what they scale; per-point scale and offset come after."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.config import Calibration, Meter, PointCalibration
from collector.daemon.calibration import calibrate
from drivers import registry
from drivers.errors import NoReply
from drivers.reading import DeviceRead

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def meter(**cal: object) -> Meter:
    m = registry.load("eastron-sdm630")
    return Meter("m", "b", 1, m, m.name, calibration=Calibration(**cal))  # type: ignore[arg-type]


def read(**values: float) -> DeviceRead:
    return DeviceRead(values=dict(values))


def test_ct_and_pt_ratios_apply_to_the_quantities_they_scale() -> None:
    r = calibrate(
        meter(ct_ratio=40, pt_ratio=100),
        read(current_l1=2.5, voltage_l1=100.0, active_power=0.75, energy_import=10.0, frequency=50.0, power_factor=0.9),
        NOW,
        NOW,
    )
    assert r.values == {
        "current_l1": 100.0,
        "voltage_l1": 10000.0,
        "active_power": 3000.0,
        "energy_import": 40000.0,
        "frequency": 50.0,
        "power_factor": 0.9,
    }
    assert r.meter_values["current_l1"] == 2.5
    assert r.quality == "good"


def test_point_scale_and_offset_follow_the_ratios() -> None:
    cal = {
        "ct_ratio": 2.0,
        "points": {"energy_import": PointCalibration(offset=1520.4), "voltage_l1": PointCalibration(scale=1.002)},
    }
    r = calibrate(meter(**cal), read(energy_import=100.0, voltage_l1=230.0), NOW, NOW)
    assert r.values["energy_import"] == pytest.approx(1720.4)
    assert r.values["voltage_l1"] == pytest.approx(230.46)


def test_quality_partial_and_bad() -> None:
    partial = DeviceRead(values={"voltage_l1": 230.0}, errors={"frequency": "not available"})
    assert calibrate(meter(), partial, NOW, NOW).quality == "partial"
    dead = DeviceRead(errors={"voltage_l1": "no reply"}, failure=NoReply("no reply"))
    assert calibrate(meter(), dead, NOW, NOW).quality == "bad"


def test_meters_of_one_model_and_calibration_share_one_table_and_others_keep_theirs() -> None:
    from collector.daemon.calibration import _table

    a, b, c = meter(ct_ratio=40), meter(ct_ratio=40), meter(ct_ratio=50)
    assert _table(a, a.model)[0] is _table(b, b.model)[0]
    assert _table(c, c.model)[0] is not _table(a, a.model)[0]
    assert calibrate(b, read(current_l1=2.5), NOW, NOW).values == {"current_l1": 100.0}
    assert calibrate(c, read(current_l1=2.5), NOW, NOW).values == {"current_l1": 125.0}
