"""The command line (docs/design.md §5): parse, call, render. Exit codes: 0 ok, 1 a meter failed, 2 usage
or config error."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector import __version__, readout
from collector.cli import logs
from collector.config import Config, load_config
from collector.daemon.calibration import GOOD
from drivers import registry
from drivers.source import ProblemsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load(path: str, *, check_files: bool = True) -> Config | None:
    """``check_files``: also the files the daemon will open (TLS, password, the buffer's folder)."""
    try:
        return load_config(path, check_files=check_files)
    except ProblemsError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    for w in config.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{config.path}: valid, {len(config.buses)} bus(es), {len(config.meters)} meter(s)")
    if config.datacenter is not None:
        _datacenter_map(config)
    return EXIT_OK


def _datacenter_map(config: Config) -> None:
    """What the platform engineer configures on the data centre's side (docs/datacenter.md)."""
    from collector.config import functions_of

    dc = config.datacenter
    assert dc is not None
    print(f"data centre {dc.url}: building {dc.building_id}, gateway {dc.gateway_id}, every {dc.period:g} s")
    for n, m in enumerate(config.meters, start=1):
        ids = ", ".join(f"{fid} {point}" for point, fid in functions_of(m).items()) or "no function ids"
        print(f"  meter {m.datacenter_id or n} = {m.id} (coding {m.category}): {ids}")


def cmd_read(args: argparse.Namespace) -> int:
    from collector.daemon.bus import read_once

    config = _load(args.config, check_files=False)
    if config is None:
        return EXIT_USAGE
    meters = list(config.meters)
    if args.meter:
        known = {m.id for m in meters}
        unknown = [m for m in args.meter if m not in known]
        if unknown:
            from drivers.source import suggest

            for u in unknown:
                print(f'read: unknown meter "{u}"{suggest(u, known)}', file=sys.stderr)
            return EXIT_USAGE
        meters = [m for m in meters if m.id in args.meter]
    through = _read_through_daemon(config, [m.id for m in meters], raw=args.raw)
    if through is not None:
        if isinstance(through, int):
            return through
        for doc in through:
            text = doc.pop("text")
            print(json.dumps(doc, ensure_ascii=False) if args.json else text)
        return EXIT_OK if all(d["quality"] == GOOD for d in through) else EXIT_FAILED
    readings = readout.continued(config, asyncio.run(read_once(config, meters, with_hidden=args.raw)))
    for r in readings:
        if args.json:
            print(json.dumps(readout.reading_doc(r, config, raw=args.raw), ensure_ascii=False))
        else:
            print(readout.render_reading(r, config, raw=args.raw))
    return EXIT_OK if all(r.quality == GOOD for r in readings) else EXIT_FAILED


def _read_through_daemon(config: Config, meter_ids: list[str], *, raw: bool) -> list[dict[str, Any]] | int | None:
    """The running daemon's fresh readings (it holds the lines), an exit code when one runs but will not
    answer, or None when no daemon runs on this config's buffer: then `read` opens the lines itself."""
    from collector.daemon import control

    request = {"command": "read", "meters": meter_ids, "raw": raw, "text": True}
    try:
        answer = control.ask(config.storage.path, request)
    except control.NoDaemon:
        return None
    except PermissionError:
        sock = control.socket_path(config.storage.path)
        print(
            f"read: a daemon is running this config but {sock} is not open to you: run as root, or add your "
            "account to the service's group (sudo usermod -aG meter-collector $USER, then log in again)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"read: the running daemon did not answer ({exc})", file=sys.stderr)
        return EXIT_FAILED
    if not answer.get("ok"):
        print(f"read: the running daemon refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    print("read through the running daemon (it holds the lines)", file=sys.stderr)
    docs: list[dict[str, Any]] = answer["readings"]
    return docs


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            print("models show: name a model (models list shows them)", file=sys.stderr)
            return EXIT_USAGE
        try:
            model = registry.load(args.name, Path.cwd())
        except KeyError:
            from drivers.source import suggest

            print(f'unknown model "{args.name}"{suggest(args.name, registry.names())}', file=sys.stderr)
            return EXIT_USAGE
        except ProblemsError as exc:
            print(exc.render(), file=sys.stderr)
            return EXIT_USAGE
        from collector.cli.models import render

        print(render(model))
        return EXIT_OK
    for name in registry.names():
        m = registry.load(name)
        print(f"{name:<20} {m.kind:<12} {m.vendor} {m.model}")
    return EXIT_OK


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host, int(port)


def cmd_simulate(args: argparse.Namespace) -> int:
    from collector.simulator.meters import make_server

    try:
        model = registry.load(args.model, Path.cwd())
        overrides = dict(_assignment(a) for a in args.set)
        served = make_server(
            model,
            tcp=_hostport(args.tcp, 502) if args.tcp else None,
            rtu_over_tcp=_hostport(args.rtu_over_tcp, 502) if args.rtu_over_tcp else None,
            serial=args.serial,
            ids=args.ids,
            baud=args.baud,
            parity=args.parity,
            line_timing=args.line_timing,
            static=args.static,
            overrides=overrides,
            zero_every=args.zero_every,
            absent=[n for a in args.absent for n in a.split(",") if n],
            di_order=args.di_order,
            turnaround=args.turnaround / 1000,
        )
    except KeyError:
        print(f'simulate: unknown model "{args.model}"', file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, ProblemsError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def serve() -> None:
        await served.server.start()
        port = getattr(served.server, "host", None) and f" {served.server.host}:{served.server.port}"
        timing = " with line timing" if args.line_timing else ""
        print(f"simulating {served.what}{port or ''}{timing}; Ctrl-C stops", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await served.server.stop()
        print(f"requests answered: {served.counts()}", flush=True)

    asyncio.run(serve())
    return EXIT_OK


def _assignment(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise ValueError(f"--set {text!r}: write NAME=NUMBER, e.g. active_power=-3.2") from None


def cmd_scan(args: argparse.Namespace) -> int:
    from collector.cli import scan
    from collector.simulator.meters import parse_ids
    from drivers.errors import NotConnected
    from drivers.modbus.transport import Link
    from drivers.serialline import SerialLine
    from drivers.serialport import SerialSettings
    from drivers.source import parse_duration

    serial_proto = args.protocol in ("dlt645", "cjt188")
    baud = args.baud or (2400 if serial_proto else 9600)
    parity = args.parity or ("E" if serial_proto else "N")
    timeout = parse_duration(args.timeout) if args.timeout else (0.5 if args.host else (1.0 if serial_proto else 0.2))
    if timeout is None:
        print(f"scan: --timeout {args.timeout!r} is not a duration (e.g. 200ms)", file=sys.stderr)
        return EXIT_USAGE
    if serial_proto and not args.port:
        print(f"scan: {args.protocol} meters are on a serial line: use --port DEV", file=sys.stderr)
        return EXIT_USAGE
    if args.port:
        from drivers.serialport import locked_by

        held = locked_by(args.port)
        if held is not None:
            who = ", ".join(held) or "another program"
            print(
                f"scan: {args.port} is held by {who}: a second master on the line would garble both. "
                "A running daemon reads its meters for you (meter-collector read -c CONFIG); to scan, stop it first "
                "(sudo systemctl stop meter-collector)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    bus: dict[str, object]
    try:
        if serial_proto:
            line = SerialLine(SerialSettings(args.port, baud, parity=parity), timeout=timeout, retries=1)
            found = asyncio.run(scan.scan_serial_protocol(args.protocol, line))
            bus = {"name": "rs485-1", "type": args.protocol, "port": args.port, "baudrate": baud, "parity": parity}
        else:
            ids = parse_ids(args.ids)
            if args.port:
                serial = SerialSettings(args.port, baud, parity=parity)
                link = Link(kind="rtu", serial=serial, timeout=timeout, retries=0, drain=timeout)
                bus = {"name": "rs485-1", "type": "rtu", "port": args.port, "baudrate": baud, "parity": parity}
            else:
                host, port = _hostport(args.host, 502)
                kind = "rtu-over-tcp" if args.rtu_over_tcp else "tcp"
                link = Link(kind=kind, host=host, port=port, timeout=timeout, retries=0)
                bus = {"name": "lan-1", "type": kind, "host": host, "port": port}
            found = asyncio.run(scan.scan_modbus(link, ids, scan.stderr))
    except NotConnected as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not found:
        hint = " (one meter at a time: several answering the wildcard address collide)" if serial_proto else ""
        print(f"nothing answered{hint}; check wiring (A/B), baud rate and parity")
        return EXIT_FAILED
    for f in found:
        print(f"{f.address}: {f.model or 'unknown model'} ({f.evidence})")
    print("\n# paste into the site config:")
    print(scan.snippet(found, bus))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from collector.daemon.service import run

    return run(args.config)


def cmd_buffer(args: argparse.Namespace) -> int:
    import sqlite3

    from collector.daemon.buffer import Buffer, CorruptBuffer
    from collector.daemon.payloads import Topics, message

    config = _load(args.config, check_files=False)
    if config is None:
        return EXIT_USAGE
    if not Path(config.storage.path).exists():
        print(f"{config.storage.path}: no buffer yet (the daemon creates it)", file=sys.stderr)
        return EXIT_FAILED
    try:
        buf = Buffer(config.storage.path, max_age=config.storage.max_age, max_size=config.storage.max_size)
    except (CorruptBuffer, sqlite3.Error, OSError) as exc:
        print(f"buffer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.action == "stats":
            stats = buf.stats()
            if args.json:
                print(json.dumps(stats))
            else:
                for k, v in stats.items():
                    print(f"{k:<22} {v}")
        else:
            prefix = config.mqtt.topic_prefix if config.mqtt else "meters"
            topics = Topics(prefix, config.gateway.id)
            for row in buf.rows():
                topic, payload = message(row, config.gateway.id, topics)
                print(json.dumps({"topic": topic, "payload": json.loads(payload)}, ensure_ascii=False))
    finally:
        buf.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from collector.simulator.demo import run_demo

    return run_demo(duration=args.duration, outage=args.outage)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meter-collector", description="Read meters; deliver every reading.")
    p.add_argument("--version", action="version", version=f"meter-collector {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (frame traces: --trace)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="the daemon: poll, buffer, publish (foreground; systemd Type=notify)")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--trace", action="store_true", help="log every frame sent and received: hex, timing")
    run.set_defaults(func=cmd_run)

    b = sub.add_parser("buffer", help="the SQLite outbox: stats, or export what is unsent as JSON lines")
    b.add_argument("action", choices=("stats", "export"))
    b.add_argument("-c", "--config", required=True)
    b.add_argument("--json", action="store_true", help="stats as JSON")
    b.set_defaults(func=cmd_buffer)

    c = sub.add_parser("check", help="validate a config; exit 0 valid, 2 invalid")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("read", help="read meters once: raw and calibrated values")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--meter", action="append", default=[], metavar="ID", help="only this meter (repeatable)")
    r.add_argument("--raw", action="store_true", help="show registers, raw and uncalibrated values too")
    r.add_argument("--json", action="store_true", help="one JSON object per meter")
    r.add_argument("--trace", action="store_true", help="log every frame sent and received: hex, timing")
    r.set_defaults(func=cmd_read)

    m = sub.add_parser("models", help="list meter models or show one with its read plan")
    m.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    m.add_argument("name", nargs="?")
    m.set_defaults(func=cmd_models)

    sc = sub.add_parser("scan", help="find the meters on a line and print a config snippet")
    on = sc.add_mutually_exclusive_group(required=True)
    on.add_argument("--port", metavar="DEV", help="a serial port, e.g. /dev/ttyUSB0")
    on.add_argument("--host", metavar="HOST[:PORT]", help="a Modbus TCP device or serial server")
    sc.add_argument("--protocol", choices=("modbus", "dlt645", "cjt188"), default="modbus")
    sc.add_argument("--rtu-over-tcp", action="store_true", help="with --host: RTU frames over TCP")
    sc.add_argument("--baud", type=int, help="default 9600 (Modbus) or 2400 (DL/T 645, CJ/T 188)")
    sc.add_argument("--parity", choices=("N", "E", "O"), help="default N (Modbus) or E (DL/T 645, CJ/T 188)")
    sc.add_argument("--ids", default="1-247", help="Modbus unit ids to try (default 1-247)")
    sc.add_argument("--timeout", help="per unit id, e.g. 200ms (default 200ms serial, 500ms TCP)")
    sc.add_argument("--trace", action="store_true", help="log every frame sent and received: hex, timing")
    sc.set_defaults(func=cmd_scan)

    s = sub.add_parser("simulate", help="serve simulated meters of a model")
    s.add_argument("--model", required=True)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP (default 127.0.0.1:5020)")
    where.add_argument("--rtu-over-tcp", metavar="HOST:PORT", help="RTU frames over TCP (serial server)")
    where.add_argument("--serial", metavar="DEV", help="RTU on a serial device (e.g. one end of a socat pair)")
    s.add_argument(
        "--ids",
        default="1",
        help="unit ids, e.g. 1-10 or 1,3,5 (default 1); DL/T 645 and "
        "CJ/T 188: 12- or 14-digit addresses, comma-separated",
    )
    s.add_argument("--baud", type=int, default=9600)
    s.add_argument("--parity", choices=("N", "E", "O"), default="N")
    s.add_argument("--line-timing", action="store_true", help="delay replies by their wire time at --baud")
    s.add_argument(
        "--turnaround",
        type=float,
        default=0.0,
        metavar="MS",
        help="Modbus: milliseconds each meter waits before it answers, as a real meter does (default 0)",
    )
    s.add_argument("--static", action="store_true", help="freeze values (to compare two masters)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="hold a point at a value in canonical units, e.g. active_power=-3.2 (repeatable); "
        "sunspec-inverter: a raw register of model 103 or 160 by its SunSpec name, e.g. W_SF=400",
    )
    s.add_argument(
        "--absent",
        action="append",
        default=[],
        metavar="POINT[,POINT]",
        help='points the meter does not have: DL/T 645 answers "no such data", Modbus sends the '
        'point\'s "not available" marker (repeatable)',
    )
    s.add_argument(
        "--di-order",
        choices=("little", "big"),
        default="little",
        help="CJ/T 188: the data identifier's byte order the meters answer (little: 1F 90, the "
        "standard's; big: 90 1F); requests in the other order get no answer",
    )
    s.add_argument(
        "--zero-every",
        type=int,
        default=0,
        metavar="N",
        help="every Nth read of a counter returns 0 (a flaky meter, to test counter integrity)",
    )
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="simulated meters read end to end on this machine")
    d.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20; 0: until Ctrl-C)")
    d.add_argument("--outage", type=float, default=5.0, help="seconds the uplink is cut midway (0: none)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.INFO if args.verb == "run" else logging.WARNING)
    logs.setup(level, trace=getattr(args, "trace", False))  # journald priorities; frame traces with --trace
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`models list | head -1`). Python's documented recipe: point stdout at
        # /dev/null so the interpreter's final flush does not fail again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
