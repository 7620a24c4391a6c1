"""`models show`: a model as its protocol speaks it (registers, or data identifiers and formats)."""

from __future__ import annotations

from drivers.model import Model, Point


def render(model: Model) -> str:
    lines = [f"{model.name}: {model.vendor} {model.model} ({model.kind}, {model.protocol})", f"manual: {model.manual}"]
    if model.protocol == "dlt645":
        lines += _dlt645(model)
    elif model.protocol == "cjt188":
        lines += _cjt188(model)
    elif model.protocol == "sunspec":
        lines.append("points: discovered from the inverter's SunSpec models at connect (1, 101-103, 160)")
    else:
        lines += _modbus(model)
    return "\n".join(lines)


def _flag(p: Point) -> str:
    flags = [] if p.publish else ["not published"]
    if p.scale_by:
        flags.append(f"x {' x '.join(p.scale_by)}")
    if p.factors:
        flags.append("codes " + ", ".join(f"{c}: x{f:g}" for c, f in p.factors))
    return f"  ({'; '.join(flags)})" if flags else ""


def _dlt645(model: Model) -> list[str]:
    width = 4 if model.edition == 1997 else 8
    out = [
        f"DL/T 645-{model.edition or 2007}: read {'01H' if width == 4 else '11H'}, one request per identifier",
        f"{'point':<24} {'identifier':<10} {'format':<10} {'sign':<6} {'offset':>6} {'scale':>8} unit",
    ]
    for p in model.points:
        fmt = p.dlt645
        if fmt is None:
            continue
        text = "X" * (fmt.digits - fmt.decimals) + ("." + "X" * fmt.decimals if fmt.decimals else "")
        out.append(
            f"{p.name:<24} {p.address:0{width}X}{'':<{10 - width}} {text:<10} {'signed' if fmt.signed else '-':<6} "
            f"{fmt.offset:>6} {p.scale:>8g} {p.unit}{_flag(p)}"
        )
    return out


def _cjt188(model: Model) -> list[str]:
    out = ["CJ/T 188: read 01H; the unit comes with each reply", f"{'point':<24} {'identifier':<10} {'field':<11} unit"]
    for p in model.points:
        field = p.cjt188.value if p.cjt188 is not None else "-"
        out.append(f"{p.name:<24} {p.address:04X}{'':<6} {field:<11} {p.unit}{_flag(p)}")
    return out


def _modbus(model: Model) -> list[str]:
    from drivers.modbus.codec import order_name
    from drivers.modbus.planner import DEFAULT_GAP_SERIAL, plan

    out = [f"{'point':<24} {'fc':>2} {'address':>8} {'type':<8} {'order':<5} {'scale':>10} unit"]
    for p in model.points:
        order = order_name(p) if p.registers > 1 else ("AB" if p.byte_order == "big" else "BA")
        out.append(
            f"{p.name:<24} {p.function.code:>2} {p.address:#08x} {p.type.value:<8} {order:<5} "
            f"{p.scale:>10g} {p.unit}{_flag(p)}"
        )
    out.append(f"\nread plan for every point (serial gap budget {DEFAULT_GAP_SERIAL}):")
    out += [f"  {req}" for req in plan(model, list(model.points), gap=DEFAULT_GAP_SERIAL)]
    return out
