"""Default 采集功能编号 (``<function id>``) of our canonical quantities (docs/design.md §3).

Ids 1–9 are the multi-function energy meter's list in D (daq-iot appendix: 1 total active energy,
2–4 phase currents, 5–7 phase voltages, 8 total active power, 9 total power factor); the rest are
our proposal. A platform configures function ids per gateway (A: "注意这里的属性id需要在网关上
对应配置"), so a site overrides them per meter. Water and PV meters report their main counter as 1,
as a platform reads function 1 for a meter's total. docs/datacenter.md §Function ids.
"""

from __future__ import annotations

#: canonical quantity -> default function id, by meter kind (a meter uses its kind's table)
DEFAULT_FUNCTION_IDS: dict[str, dict[str, str]] = {
    "electricity": {
        "energy_import": "1",  # D: 正向有功总电能 total active energy
        "current_l1": "2",  # D
        "current_l2": "3",  # D
        "current_l3": "4",  # D
        "voltage_l1": "5",  # D
        "voltage_l2": "6",  # D
        "voltage_l3": "7",  # D
        "active_power": "8",  # D
        "power_factor": "9",  # D
        "energy_export": "10",
        "reactive_energy_import": "11",
        "reactive_energy_export": "12",
        "reactive_power": "13",
        "apparent_power": "14",
        "frequency": "15",
        "voltage_l1_l2": "16",
        "voltage_l2_l3": "17",
        "voltage_l3_l1": "18",
        "current_n": "19",
        "active_power_l1": "20",
        "active_power_l2": "21",
        "active_power_l3": "22",
    },
    "water": {
        "volume": "1",  # the meter's total, read as function 1
        "flow_rate": "2",
        "water_temperature": "3",
    },
    "pv": {
        "energy_yield_total": "1",
        "ac_power": "8",  # as active_power
        "dc_power": "23",
        "energy_yield_today": "24",
    },
}
