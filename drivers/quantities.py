"""The closed vocabulary of quantity names, one canonical unit each (docs/design.md §3).

The platform sees the same key, in the same unit, for the same quantity whichever meter measured
it. A model file says the unit the *meter* uses (W, Wh, L ...); loading converts to the canonical
unit here, so a model cannot publish watts under a kilowatt name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Nature(StrEnum):
    INSTANT = "instant"  #: a value at a moment: voltage, power
    COUNTER = "counter"  #: a monotonic total: energy, volume (may roll over)
    STATE = "state"  #: an enumeration or bit field, never scaled


class Ratio(StrEnum):
    """Which transformer ratios scale a quantity measured on the secondary side."""

    NONE = "none"
    CT = "ct"  #: currents
    PT = "pt"  #: voltages
    CT_PT = "ct*pt"  #: powers and energies


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    nature: Nature
    ratio: Ratio = Ratio.NONE


def _q(names: str, unit: str, nature: Nature = Nature.INSTANT, ratio: Ratio = Ratio.NONE) -> list[Quantity]:
    return [Quantity(n, unit, nature, ratio) for n in names.split()]


_PHASES = "_l1 _l2 _l3"
_POWER = [f"{p}{s}" for p in ("active_power", "reactive_power", "apparent_power") for s in ("", *_PHASES.split())]

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in [
        *_q("voltage_l1 voltage_l2 voltage_l3", "V", ratio=Ratio.PT),
        *_q("voltage_l1_l2 voltage_l2_l3 voltage_l3_l1", "V", ratio=Ratio.PT),
        *_q("current_l1 current_l2 current_l3 current_n", "A", ratio=Ratio.CT),
        *_q(" ".join(p for p in _POWER if p.startswith("active")), "kW", ratio=Ratio.CT_PT),
        *_q(" ".join(p for p in _POWER if p.startswith("reactive")), "kvar", ratio=Ratio.CT_PT),
        *_q(" ".join(p for p in _POWER if p.startswith("apparent")), "kVA", ratio=Ratio.CT_PT),
        *_q("power_factor power_factor_l1 power_factor_l2 power_factor_l3", "-"),
        *_q("frequency", "Hz"),
        *_q("energy_import energy_export", "kWh", Nature.COUNTER, Ratio.CT_PT),
        *_q("reactive_energy_import reactive_energy_export", "kvarh", Nature.COUNTER, Ratio.CT_PT),
        *_q("volume", "m³", Nature.COUNTER),
        *_q("flow_rate", "m³/h"),
        *_q("water_temperature", "°C"),
        *_q("ac_power dc_power", "kW"),
        *_q("energy_yield_total", "kWh", Nature.COUNTER),
        # Resets every day: a counter within the day, so not checked for monotony across days.
        *_q("energy_yield_today", "kWh"),
        *_q("inverter_state", "-", Nature.STATE),  # a number of INVERTER_STATES (a model maps its codes)
        *_q("inverter_state_code", "-", Nature.STATE),  # the vendor's own code, as the register holds it
    ]
}

#: What ``inverter_state`` publishes, whichever vendor's encoding the meter uses: SunSpec's operating
#: state St (model 101/103, enum16), numbers as SunSpec assigns them. A model maps its vendor codes
#: to these names with a point's ``states:`` table (drivers/model.py); SunSpec's St is native.
INVERTER_STATES: dict[str, int] = {
    "off": 1,
    "sleeping": 2,  #: auto-shutdown, e.g. at night
    "starting": 3,
    "mppt": 4,  #: producing, tracking the maximum power point
    "throttled": 5,  #: producing below the maximum (derating, curtailment)
    "shutting_down": 6,
    "fault": 7,
    "standby": 8,
}

#: unit as a meter states it -> (canonical unit, factor to multiply by)
UNIT_CONVERSIONS: dict[str, tuple[str, float]] = {
    "V": ("V", 1.0),
    "kV": ("V", 1000.0),
    "mV": ("V", 0.001),
    "A": ("A", 1.0),
    "mA": ("A", 0.001),
    "W": ("kW", 0.001),
    "kW": ("kW", 1.0),
    "MW": ("kW", 1000.0),
    "var": ("kvar", 0.001),
    "kvar": ("kvar", 1.0),
    "VA": ("kVA", 0.001),
    "kVA": ("kVA", 1.0),
    "Wh": ("kWh", 0.001),
    "kWh": ("kWh", 1.0),
    "MWh": ("kWh", 1000.0),
    "varh": ("kvarh", 0.001),
    "kvarh": ("kvarh", 1.0),
    "Hz": ("Hz", 1.0),
    "-": ("-", 1.0),
    "%": ("-", 0.01),
    "m³": ("m³", 1.0),
    "m3": ("m³", 1.0),
    "L": ("m³", 0.001),
    "m³/h": ("m³/h", 1.0),
    "m3/h": ("m³/h", 1.0),
    "L/h": ("m³/h", 0.001),
    "L/s": ("m³/h", 3.6),
    "°C": ("°C", 1.0),
    "degC": ("°C", 1.0),
}


def canonical_unit(meter_unit: str) -> tuple[str, float] | None:
    """(canonical unit, factor) for a unit a meter may count in, or None if unknown."""
    return UNIT_CONVERSIONS.get(meter_unit)
