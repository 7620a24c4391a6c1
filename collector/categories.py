"""Energy classification codes (分类分项能耗编码) for a meter's ``category``.

The national sub-metering guideline for public buildings (国家机关办公建筑和大型公共建筑能耗监测系统
分项能耗数据采集技术导则, 2008) codes a category in 5 characters: 2 digits for the kind of energy, a
letter for the first-level item, a digit for the second and a digit or letter for the third. The
table below is the one found consistent across independent implementations
(docs/reference/protocols-and-meters.md §1.2); second- and third-level codes vary between local
platforms, so a site extends the table in its config (``categories:``).
"""

from __future__ import annotations

NATIONAL: dict[str, str] = {
    "01000": "electricity (电)",
    "01A00": "lighting and sockets (照明插座用电)",
    "01A10": "indoor lighting (室内照明)",
    "01A20": "corridor and emergency lighting (走廊与应急照明)",
    "01A30": "outdoor lighting (室外照明)",
    "01A40": "office equipment sockets (办公设备插座)",
    "01B00": "air conditioning (空调用电)",
    "01B10": "heating and cooling plant (冷热站)",
    "01B1A": "chillers (冷水机组)",
    "01B1B": "cooling water pumps (冷却泵)",
    "01B1C": "chilled water pumps (冷冻泵)",
    "01B1D": "cooling tower fans (冷却塔风机)",
    "01B1E": "heating pumps (采暖泵)",
    "01B1F": "boilers (锅炉)",
    "01B20": "air-conditioning terminals (空调末端)",
    "01B30": "split air conditioners (分散空调)",
    "01C00": "power (动力用电)",
    "01C10": "lifts (电梯)",
    "01C20": "water pumps (水泵)",
    "01C30": "ventilation fans (通风机)",
    "01C40": "water boilers (电开水器)",
    "01D00": "special uses (特殊用电)",
    "01D10": "information centre (信息中心)",
    "01D1A": "IT equipment (信息设备)",
    "01D1B": "information centre air conditioning (信息中心专用空调)",
    "01D20": "kitchen equipment (厨房设备)",
    "01D30": "special-purpose equipment (特殊用途设备)",
    "02000": "water (水)",
    "03A00": "natural gas (天然气)",
    "03B00": "coke oven gas (焦炉燃气)",
    "03C00": "other gas (其他燃气)",
    "04000": "district heating (集中供热量)",
    "05000": "district cooling (集中供冷量)",
}
