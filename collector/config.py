"""Site config: YAML -> validated, frozen settings (docs/design.md §4). No I/O beyond reading files (and,
with ``check_files``, looking at the files and folders it names).

Everything is checked before anything starts, every problem is reported at once with file:line and
the field's path, and a name that is almost right gets a "did you mean". Then a second pass checks
rules across items: a meter on an unknown bus, a duplicate id, two meters with one address on one
bus, two buses on one serial device. Unknown keys are errors: a typo must not pass silently.

With ``check_files`` (the default) the config is also checked against this machine, as the user
running the check, so that `check` refuses what `run` could not live with: the files named under
mqtt exist and are readable, and the storage file can be created and written. Nothing is created
or changed. Relative paths (files, storage, site models) are relative to the config file's folder.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.categories import NATIONAL
from collector.uplink.functions import DEFAULT_FUNCTION_IDS
from collector.uplink.keys import AES_KEY_BYTES, KeyFileError, read_key_file
from collector.uplink.variant import Variant, VariantError, parse_variant
from drivers import registry
from drivers.model import Model
from drivers.quantities import Nature
from drivers.serialport import PARITIES, SerialSettings
from drivers.source import (
    Fields,
    Node,
    ProblemsError,
    Sink,
    control_character,
    duration_field,
    items,
    load_file,
    parse_size,
    suggest,
)

ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")  #: use with fullmatch (``$`` would let a final newline in)
CATEGORY = re.compile(r"[0-9]{2}[0-9A-Z]{3}")  #: an energy category code such as 01A00 (fullmatch)
BUS_TYPES = ("rtu", "tcp", "rtu-over-tcp", "dlt645", "cjt188")
SERIAL_TYPES = ("rtu", "dlt645", "cjt188")
#: which model protocols each bus type carries
BUS_PROTOCOLS = {
    "rtu": ("modbus", "sunspec"),
    "tcp": ("modbus", "sunspec"),
    "rtu-over-tcp": ("modbus", "sunspec"),
    "dlt645": ("dlt645",),
    "cjt188": ("cjt188",),
}
#: serial defaults per bus type: DL/T 645 and CJ/T 188 meters ship at 2400 8E1
SERIAL_DEFAULTS = {"rtu": (9600, "N"), "dlt645": (2400, "E"), "cjt188": (2400, "E")}
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Gateway:
    id: str
    site: str = ""
    building: str = ""


DEFAULT_BUFFER = "/var/lib/meter-collector/buffer.db"
DEFAULT_MAX_AGE = 30 * DAY
DEFAULT_MAX_SIZE = 2 * 1000**3


@dataclass(frozen=True, slots=True)
class Storage:
    path: str = DEFAULT_BUFFER
    max_age: float = DEFAULT_MAX_AGE  #: seconds
    max_size: int = DEFAULT_MAX_SIZE  #: bytes


@dataclass(frozen=True, slots=True)
class Mqtt:
    url: str
    host: str
    port: int
    tls: bool
    client_id: str
    username: str | None = None
    password_file: str | None = None  #: the password itself is read at connect time, never kept here
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    topic_prefix: str = "meters"
    protocol: str = "5"  #: "5" or "3.1.1"
    keepalive: float = 60.0
    max_inflight: int = 100  #: QoS 1 messages awaiting PUBACK at once
    health_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Datacenter:
    """The national data-centre uplink (docs/datacenter.md). The keys themselves are read when the
    daemon starts (and on reload), never kept here."""

    url: str
    host: str
    port: int
    building_id: str
    gateway_id: str
    key_file: str  #: the shared key: the MD5 login key, and the AES key unless aes_key_file is set
    aes_key_file: str | None = None
    period: float = 900.0  #: seconds between reports
    heartbeat: float = 60.0
    variant: Variant = field(default_factory=Variant)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Bus:
    name: str
    type: str
    serial: SerialSettings | None = None  #: the serial line (rtu, dlt645, cjt188); None on a network bus
    host: str = ""
    port: int = 502
    timeout: float = 0.5
    retries: int = 1
    pause: float = 0.0
    drain: float | None = None
    gap: int | None = None
    line: int = 0

    @property
    def device(self) -> str:
        """The serial device; "" on a network bus."""
        return self.serial.device if self.serial else ""

    def describe(self) -> str:
        if self.serial:
            return self.serial.describe()
        return f"{self.type}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PointCalibration:
    scale: float = 1.0
    offset: float = 0.0
    max_rate: float | None = None  #: counters: the largest believable rise per hour (kWh/h = kW, m³/h)


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter swapped on site: the published counter continues across it."""

    at: float  #: unix seconds
    point: str
    old_final: float  #: the old meter's last reading, as the meter shows it (canonical unit)
    new_first: float  #: the new meter's first reading
    line: int = 0


@dataclass(frozen=True, slots=True)
class Calibration:
    ct_ratio: float = 1.0
    pt_ratio: float = 1.0
    points: dict[str, PointCalibration] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    bus: str
    address: int | str  #: Modbus unit id, or the 12-digit (DL/T 645) / 14-digit (CJ/T 188) meter address
    model: Model
    model_ref: str
    interval: float = 60.0
    category: str | None = None
    points: tuple[str, ...] = ()  #: what is published; default: every published point of the model
    calibration: Calibration = Calibration()
    replacements: tuple[Replacement, ...] = ()
    line: int = 0
    where: str = ""  #: path in the config, e.g. meters[3]
    address_line: int = 0
    datacenter_id: str | None = None  #: its ``<meter id>`` for the data centre; default its position (1, 2 ...)
    function_ids: dict[str, str] = field(default_factory=dict)  #: point -> ``<function id>``, over the defaults


WEB_USER = "admin"  #: the status page's HTTP basic auth user name when web.username is not set


@dataclass(frozen=True, slots=True)
class Web:
    """The status page and /metrics (collector/daemon/web.py). Absent from the config: not served."""

    listen: str  #: as written, e.g. 127.0.0.1:8080 or [::1]:8080
    host: str  #: "" means every address
    port: int
    username: str = WEB_USER
    password_file: str | None = None  #: HTTP basic auth; read when the page starts, never kept here
    line: int = 0


@dataclass(frozen=True, slots=True)
class Clock:
    sync_check: str = "kernel"  #: "kernel": trust the clock once NTP has set it (adjtimex); "none": always
    step_threshold: float = 2.0  #: seconds of sudden difference between wall and monotonic clocks


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    gateway: Gateway
    storage: Storage
    mqtt: Mqtt | None
    buses: dict[str, Bus]
    meters: tuple[Meter, ...]
    clock: Clock = Clock()
    consumption_interval: float = 900.0  #: seconds: the interval consumption is published for
    categories: dict[str, str] = field(default_factory=dict)  #: code -> name (national table + the site's)
    #: located, like problems (``file:line path: message``): worth telling, not refused
    warnings: list[str] = field(default_factory=list)
    web: Web | None = None
    datacenter: Datacenter | None = None

    def meter(self, meter_id: str) -> Meter:
        for m in self.meters:
            if m.id == meter_id:
                return m
        raise KeyError(meter_id)


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Load and validate a site config; raises drivers.source.ProblemsError listing every problem.

    ``check_files``: also check, as this user, that the files under mqtt can be read and that the
    storage file can be created and written (what `check`, `run` and a reload need). False for
    commands that use neither (`read`) or only read the buffer, and for checking a config meant for
    another machine.
    """
    path = Path(path)
    root = load_file(path)
    sink = Sink(str(path))
    config = _build(root, path, sink, check_files)
    sink.raise_if_any()
    assert config is not None
    return config


def _build(root: Node, path: Path, sink: Sink, check_files: bool = True) -> Config | None:
    top = _Fields(root, "", sink)
    if not top.ok:
        return None
    here = Path(os.path.abspath(path)).parent  #: what relative file and storage paths are relative to
    gateway = _gateway(_section(top, "gateway", root))
    storage = _storage(_section(top, "storage", root), here, check_files)
    mqtt = _mqtt(top.raw("mqtt"), sink, gateway.id, here, check_files)
    datacenter = _datacenter(top.raw("datacenter"), sink, here, check_files)
    web = _web(top.raw("web"), sink, here, check_files)
    clock = _clock(_section(top, "clock", root))
    consumption = _consumption(_section(top, "consumption", root))
    categories = _categories(top.raw("categories"), sink)
    buses = _buses(top.raw("buses"), sink)
    meters = _meters(top.raw("meters"), sink, buses, path.parent, categories)
    top.done()
    if not meters and top.has("meters") is False:
        sink.add(root.line, "meters", "is required: a list of the meters to read")
    _across(meters, buses, sink)
    if datacenter is not None:
        _across_datacenter(datacenter, meters, sink)
    warnings = [str(w) for w in sorted(sink.warnings, key=lambda p: (p.line, p.path))]
    return Config(
        str(path),
        gateway,
        storage,
        mqtt,
        buses,
        tuple(meters),
        clock,
        consumption,
        categories,
        warnings,
        web=web,
        datacenter=datacenter,
    )


class _Fields(Fields):
    """Fields with the rules the builders below share, so that each builder reads as a table of rules.

    A rule that fails reports a located problem and gives the default, as every accessor does; a value
    of the wrong type is reported once, by ``get``, and not checked against the rule.
    """

    def whole(
        self,
        key: str,
        default: int | None,
        *,
        within: tuple[int, int] | None = None,
        among: tuple[int, ...] = (),
        what: str = "",
        required: bool = False,
    ) -> Any:
        """A whole number within low..high (``300 is outside 1..247{what}``) or one of a few
        (``3 must be 1 or 2``, ``9601 is not one of 1200, 2400, ...``)."""
        value = self.get(key, int, None, required=required)
        if value is None:
            return default
        if within is not None and not within[0] <= value <= within[1]:
            self.problem(key, f"{value} is outside {within[0]}..{within[1]}{what}")
            return default
        if among and value not in among:
            rule = f"must be {among[0]} or {among[1]}" if len(among) == 2 else f"is not one of {_listed(among)}"
            self.problem(key, f"{value} {rule}")
            return default
        return value

    def number(self, key: str, default: float | None, *, above: float, why: str = "") -> Any:
        """A number greater than ``above``: ``must be > 0{why}``."""
        value = self.get(key, float, None)
        if value is None:
            return default
        if not value > above:
            self.problem(key, f"must be > {above:g}{why}")
            return default
        return value

    def duration(self, key: str, default: float | None, *, low: float = 0.0, high: float = 1e9) -> Any:
        """A duration (``30s``) within low..high."""
        return duration_field(self, key, default, low=low, high=high)


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values))


def _section(top: Fields, key: str, root: Node) -> _Fields:
    node = top.raw(key)
    return _Fields(node if node is not None else Node({}, root.line), key, top.sink)


def _gateway(f: _Fields) -> Gateway:
    gid = f.get("id", str, "gateway", required=True)
    if control_character(gid):
        f.problem("id", f"must not contain control characters ({control_character(gid)})")
    elif not ID.fullmatch(gid):
        f.problem("id", f'"{gid}" must be lower case letters, digits and - (it appears in every topic)')
    gateway = Gateway(gid, site=f.text("site", ""), building=f.text("building", ""))
    f.done()
    return gateway


def _storage(f: _Fields, base: Path, check_files: bool) -> Storage:
    written = f.text("path", DEFAULT_BUFFER)
    if not written:
        f.problem("path", "must name the buffer file, e.g. /var/lib/meter-collector/buffer.db")
        written = DEFAULT_BUFFER
    spath = _resolve(written, base)
    if check_files and spath != ":memory:":
        problem = _storage_problem(Path(spath))
        if problem:
            default = "" if f.has("path") else " (the default, as storage.path is not set)"
            f.problem("path", _located(written, spath, problem) + default)
    storage = Storage(spath, f.duration("max_age", DEFAULT_MAX_AGE, low=3600, high=3650 * DAY), _max_size(f))
    f.done()
    return storage


def _max_size(f: _Fields) -> int:
    node = f.raw("max_size")
    if node is None or node.value is None:
        return DEFAULT_MAX_SIZE
    size = parse_size(node.value)
    if size is None:
        f.problem("max_size", f'"{node.value}" is not a size; write e.g. 512MB or 2GB')
    elif size < 1000**2:
        f.problem("max_size", f"{node.value} is too small (at least 1MB)")
    else:
        return size
    return DEFAULT_MAX_SIZE


def _clock(f: _Fields) -> Clock:
    clock = Clock(
        sync_check=f.choice("sync_check", ("kernel", "none"), "kernel"),
        step_threshold=f.duration("step_threshold", 2.0, low=0.5, high=3600),
    )
    f.done()
    return clock


def _consumption(f: _Fields) -> float:
    """The interval consumption is published for: 15m, 1h or 1d."""
    interval: float = f.duration("interval", 900.0, low=60, high=DAY)
    if f.has("interval") and interval not in (900.0, 3600.0, DAY):
        f.problem("interval", "must be 15m, 1h or 1d")
        interval = 900.0
    f.done()
    return interval


def _categories(node: Node | None, sink: Sink) -> dict[str, str]:
    """The national table and the site's own codes."""
    categories = dict(NATIONAL)
    if node is not None and node.value is not None:
        cats = Fields(node, "categories", sink)
        for code in list(cats.data):
            name = cats.get(code, str, "")
            if not CATEGORY.fullmatch(code):
                cats.problem(code, f'"{code}" is not an energy classification code like "01E00" (quote it)')
            else:
                categories[code] = name
    return categories


def _mqtt(node: Node | None, sink: Sink, gateway_id: str, base: Path, check_files: bool) -> Mqtt | None:
    if node is None:
        return None
    f = _Fields(node, "mqtt", sink)
    url, host, port, tls = _broker(f)
    password_file, ca_file, cert_file, key_file = _mqtt_files(f, base, check_files, plain=bool(host and not tls))
    topic_prefix = f.text("topic_prefix", "meters")
    if (topic_prefix and any(c in topic_prefix for c in "#+")) or topic_prefix.startswith("/"):
        f.problem("topic_prefix", "must not contain # or + or start with /")
    m = Mqtt(
        url=url,
        host=host,
        port=port,
        tls=tls,
        client_id=f.text("client_id", gateway_id),
        username=f.text("username"),
        password_file=password_file,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        topic_prefix=topic_prefix,
        protocol=str(f.choice("protocol", ("5", "3.1.1"), "5")),
        keepalive=f.duration("keepalive", 60.0, low=5, high=3600),
        max_inflight=f.whole("max_inflight", 100, within=(1, 65535)),
        health_interval=f.duration("health_interval", 60.0, low=1, high=3600),
    )
    f.done()
    return m


def _broker(f: _Fields) -> tuple[str, str, int, bool]:
    """url, host, port, tls from ``mqtt://host[:port]`` or ``mqtts://...``."""
    url = f.text("url", "", required=True)
    if not url:
        return url, "", 1883, False
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        f.problem("url", f'"{url}" must start with mqtt:// or mqtts://')
        return url, "", 1883, False
    if not parts.hostname:
        f.problem("url", f'"{url}" has no host')
        return url, "", 1883, False
    tls = parts.scheme == "mqtts"
    default_port = 8883 if tls else 1883
    port = default_port
    try:
        given = parts.port
    except ValueError:
        f.problem("url", f'"{url}" has a bad port')
    else:
        if given == 0:
            f.problem("url", f'"{url}" has port 0; leave the port out for the default ({default_port})')
        port = given or default_port
    if parts.password:
        f.problem("url", "must not contain a password; use password_file or MC_MQTT_PASSWORD")
    return url, parts.hostname, port, tls


def _mqtt_files(
    f: _Fields, base: Path, check_files: bool, *, plain: bool
) -> tuple[str | None, str | None, str | None, str | None]:
    """password_file, ca_file, cert_file, key_file (an inline password is refused); ``plain``: the url
    is a valid mqtt:// one, so the TLS files are not used."""
    if f.has("password"):
        f.raw("password")
        f.problem(
            "password",
            "inline passwords end up in backups and logs; "
            "use password_file or the MC_MQTT_PASSWORD environment variable",
        )
    files = {key: _file(f, key, base, check_files) for key in ("password_file", "ca_file", "cert_file", "key_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        missing = "cert_file" if files["cert_file"] is None else "key_file"
        f.problem(missing, "a client certificate needs both cert_file and key_file")
    for key in ("ca_file", "cert_file", "key_file"):
        if files[key] is not None and plain:
            f.warn(key, "is not used: the url is mqtt:// (no TLS); TLS needs mqtts://")
    if check_files and files["password_file"]:
        _private(f, "password_file", files["password_file"])
    return files["password_file"], files["ca_file"], files["cert_file"], files["key_file"]


def _datacenter(node: Node | None, sink: Sink, base: Path, check_files: bool) -> Datacenter | None:
    """``datacenter:``, the national uplink (docs/datacenter.md). With ``check_files`` the key files
    are read to check their length; what they hold is never reported."""
    if node is None:
        return None
    f = _Fields(node, "datacenter", sink)
    if not f.ok:
        return None
    url, host, port = _datacenter_url(f)
    building_id, gateway_id = _platform_id(f, "building_id"), _platform_id(f, "gateway_id")
    key_file = _file(f, "key_file", base, check_files)
    if key_file is None and not f.has("key_file"):
        sink.add(node.line, "datacenter.key_file", "is required: the file holding the key the platform assigned")
    aes_key_file = _file(f, "aes_key_file", base, check_files)
    if check_files:
        if key_file and not _file_problem(key_file):
            _key_length(f, "key_file", key_file, AES_KEY_BYTES if aes_key_file is None else None)
        if aes_key_file and not _file_problem(aes_key_file):
            _key_length(f, "aes_key_file", aes_key_file, AES_KEY_BYTES)
    period: float = f.duration("period", 900.0, low=1.0, high=3600.0)
    if f.has("period") and DAY % period != 0:
        f.problem("period", "must divide a day evenly (e.g. 5m, 15m, 1h) so periods align with the clock")
        period = 900.0
    elif f.has("period") and period < 180:
        f.warn("period", "is shorter than the 3 min the guideline allows (fine for a test data centre)")
    heartbeat: float = f.duration("heartbeat", 60.0, low=1.0, high=3600.0)
    variant = _variant(f)
    f.done()
    if not host or key_file is None:
        return None
    return Datacenter(
        url, host, port, building_id, gateway_id, key_file, aes_key_file, period, heartbeat, variant, node.line
    )


def _datacenter_url(f: _Fields) -> tuple[str, str, int]:
    """url, host, port from ``tcp://host:port`` (the platform names the port: there is no standard one)."""
    url: str = f.text("url", "", required=True)
    if not url:
        return url, "", 0
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or not port or parts.path not in ("", "/"):
        f.problem("url", f'"{url}" must be tcp://host:port, e.g. tcp://dc.example.gov.cn:7201')
        return url, "", 0
    return url, parts.hostname, port


def _platform_id(f: _Fields, key: str) -> str:
    """building_id, gateway_id: assigned by the platform; quoted, so leading zeros stay."""
    value: str = f.text(key, "", required=True)
    if value and not re.fullmatch(r"[0-9A-Za-z_-]{1,32}", value):
        f.problem(key, f'"{_printable(value)}" must be 1..32 letters, digits, _ or - (as the platform assigned it)')
    return value


def _key_length(f: _Fields, key: str, path: str, length: int | None) -> None:
    """A key file's length (a final newline does not count); its bytes never reach a message."""
    try:
        read_key_file(path, length)
    except KeyFileError as exc:
        other = " (or set aes_key_file when the AES key differs from the login key)" if key == "key_file" else ""
        f.problem(key, f"{exc}{other if exc.kind == 'length' else ''}")
        if exc.kind == "unreadable":
            return
    _private(f, key, path)


def _variant(f: _Fields) -> Variant:
    """``variant: {option: value}`` (collector/uplink/variant.py), each bad option on its own line."""
    node = f.raw("variant")
    if node is None or node.value is None:
        return Variant()
    try:
        return parse_variant(node.plain())
    except VariantError as exc:
        lines = node.value if isinstance(node.value, dict) else {}
        for issue in exc.issues:
            at = lines[issue.key].line if issue.key in lines else node.line
            key_line = node.key_lines.get(issue.key, at)
            path = "datacenter.variant" if issue.key == "variant" else f"datacenter.variant.{issue.key}"
            f.sink.add(key_line, path, issue.message)
        return Variant()


def _web(node: Node | None, sink: Sink, base: Path, check_files: bool) -> Web | None:
    """``web: {listen: 127.0.0.1:8080}``. Beyond loopback the page needs a password: it shows the site."""
    if node is None:
        return None
    f = _Fields(node, "web", sink)
    if not f.ok:
        return None
    listen: str = f.text("listen", "", required=True)
    host, port = _listen(f, listen)
    username: str = f.text("username", WEB_USER)
    if not username or ":" in username:
        f.problem("username", f'"{username}" must be a name without ":" (HTTP basic auth), e.g. {WEB_USER}')
        username = WEB_USER
    password_file = _file(f, "password_file", base, check_files)
    if password_file == "":
        f.problem("password_file", "is empty; name a file or leave the key out")
        password_file = None
    elif password_file and check_files and not _file_problem(password_file):
        if os.path.getsize(password_file) == 0:
            f.problem("password_file", f"{password_file} is empty: write the page's password into it")
        _private(f, "password_file", password_file)
    if port and not password_file and not f.has("password_file") and not _loopback(host):
        f.problem(
            "listen",
            f"{listen} is reachable from other machines: set web.password_file (HTTP basic auth, user "
            f'"{username}"), or listen on 127.0.0.1 and open the page through an ssh tunnel',
        )
    f.done()
    if not port:
        return None
    return Web(listen, host, port, username, password_file, node.line)


def _listen(f: _Fields, listen: str) -> tuple[str, int]:
    """host and port from ``127.0.0.1:8080``, ``[::1]:8080``, ``0.0.0.0:8080`` or ``:8080`` (every address);
    port 0 when it is not one."""
    if not listen:
        return "", 0
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs brackets: [::1]:8080
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        f.problem("listen", f'"{listen}" must be host:port with a port 1..65535, e.g. 127.0.0.1:8080 or [::1]:8080')
        return "", 0
    return host, int(port_text)


def _loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: only this machine reaches them."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _resolve(written: str, base: Path) -> str:
    """A path from the config: a relative one is relative to the config file's folder, as for models.

    (The daemon runs from /, `check` from anywhere: relative to the working directory, one path
    would name two files.)
    """
    if not written or written == ":memory:" or os.path.isabs(written):
        return written
    return str(base / written)


def _located(written: str, resolved: str, problem: str) -> str:
    """``ca.pem does not exist (that is /etc/meter-collector/ca.pem)``: a relative path, resolved."""
    return f"{written} {problem}" if written == resolved else f"{written} {problem} (that is {resolved})"


def _file(f: Fields, key: str, base: Path, check_files: bool) -> str | None:
    """A file the daemon reads (password, CA, client certificate and key): resolved, and readable."""
    written: str | None = f.text(key)
    if written is None:
        return None
    if not written:
        if key != "password_file":  # an empty password_file means "none": MC_MQTT_PASSWORD
            f.problem(key, "is empty; name a file or leave the key out")
            return None
        return written
    resolved = _resolve(written, base)
    if check_files:
        problem = _file_problem(resolved)
        if problem:
            f.problem(key, _located(written, resolved, problem))
    return resolved


def _file_problem(path: str) -> str:
    """Why the daemon could not read the file at path, as this user; "" when it could."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not os.access(path, os.R_OK):
        return f"is not readable ({os.strerror(errno.EACCES)})"
    return ""


def _private(f: Fields, key: str, path: str) -> None:
    """A secret others can read is worth a warning, not a refusal.

    Readable by its group is the documented setup (root:meter-collector 0640, docs/operations.md):
    warned only when the group lets more than one user besides the owner read it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o004:
        f.warn(key, f"{path} can be read by every user on this machine (mode {mode:04o}); chmod 600 or 640 it")
    elif mode & 0o040:
        group, readers = _group_readers(st.st_gid, st.st_uid)
        if len(readers) > 1:
            f.warn(
                key,
                f"{path} can be read by group {group}: {', '.join(sorted(readers))} (mode {mode:04o}); "
                "give it a group only the daemon's user is in, or chmod 600 it",
            )


def _group_readers(gid: int, owner: int) -> tuple[str, set[str]]:
    """The group's name and its users (members, and users it is the primary group of) but the owner."""
    try:
        import grp
        import pwd

        group = grp.getgrgid(gid)
        users = set(group.gr_mem) | {u.pw_name for u in pwd.getpwall() if u.pw_gid == gid}
        users -= {u.pw_name for u in pwd.getpwall() if u.pw_uid == owner}
        return group.gr_name, users
    except (ImportError, KeyError):
        return str(gid), set()


def _storage_problem(path: Path) -> str:
    """Why the daemon could not create and write the SQLite file at path, as this user; "" when it could.

    Nothing is created: the first existing ancestor must be a folder this user can write into
    (SQLite also writes -wal and -shm files beside the database).
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        return f"cannot be reached ({exc.strerror})"
    else:
        if stat.S_ISDIR(st.st_mode):
            return f"is a directory; name the buffer file, e.g. {path / 'buffer.db'}"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"is not writable ({os.strerror(errno.EACCES)})"
    ancestor = path.parent
    while True:
        try:
            st = os.stat(ancestor)
            break
        except (FileNotFoundError, NotADirectoryError):
            if ancestor.parent == ancestor:
                return "cannot be created: no folder above it exists"
            ancestor = ancestor.parent
        except OSError as exc:
            return f"cannot be created: {ancestor}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"cannot be created: {ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "cannot be written" if ancestor == path.parent else "cannot be created"
        return f"{what}: user {_user()} cannot write in {ancestor}"
    return ""


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _one_bus_per_device(bus: Bus, node: Node, where: str, devices: dict[str, tuple[Bus, str]], sink: Sink) -> None:
    """Two buses on one serial device would fight over it (the port is opened exclusively).

    Compared as written and with symlinks resolved (/dev/serial/by-id/... -> /dev/ttyUSB0). A device
    that does not exist is no problem here: USB adapters come and go.
    """
    real = os.path.realpath(bus.device)
    first = devices.get(bus.device) or devices.get(real)
    port = node.value.get("port") if isinstance(node.value, dict) else None
    line = port.line if isinstance(port, Node) else node.line
    if first is not None:
        other, other_device = first
        owner = f'bus "{other.name}" (line {other.line})'
        if other_device == bus.device:
            message = f"{bus.device} is already the port of {owner}"
        else:
            message = f"{bus.device} is the same device as {other_device}, the port of {owner}"
        sink.add(line, f"{where}.port", message, bus.name)
        return
    devices.setdefault(bus.device, (bus, bus.device))
    devices.setdefault(real, (bus, bus.device))


def _identity(f: Fields, key: str) -> str:
    """An item's name ([a-z0-9-]), which also labels every message about the item."""
    value: str = f.get(key, str, "", required=True)
    f.label = _printable(value)
    if control_character(value):
        f.problem(key, f"must not contain control characters ({control_character(value)})")
    elif value and not ID.fullmatch(value):
        f.problem(key, f'"{value}" must be lower case letters, digits and -')
    return value


def _printable(text: str) -> str:
    """text with control characters written as \\xNN, for messages and labels."""
    return "".join(f"\\x{ord(c):02x}" if control_character(c) else c for c in text)


def _buses(node: Node | None, sink: Sink) -> dict[str, Bus]:
    buses: dict[str, Bus] = {}
    devices: dict[str, tuple[Bus, str]] = {}  #: serial device (as written, and resolved) -> bus, as written
    for where, item in items(node, "buses", sink):
        bus = _bus(item, where, sink)
        if bus is None:
            continue
        if bus.name in buses:
            first = buses[bus.name].line
            sink.add(item.line, where, f'duplicate bus name "{bus.name}" (first on line {first})', bus.name)
            continue
        buses[bus.name] = bus
        if bus.serial and bus.device.startswith("/"):
            _one_bus_per_device(bus, item, where, devices, sink)
    return buses


def _bus(node: Node, where: str, sink: Sink) -> Bus | None:
    f = _Fields(node, where, sink)
    if not f.ok:
        return None
    name = _identity(f, "name")
    btype = f.choice("type", BUS_TYPES, None, required=True)
    kw: dict[str, Any] = {}
    if btype in SERIAL_TYPES:
        kw["serial"] = _serial(f, btype)
    elif btype in ("tcp", "rtu-over-tcp"):
        kw["host"] = f.text("host", "", required=True)
        kw["port"] = f.whole("port", 502, within=(1, 65535))
    kw["timeout"] = f.duration("timeout", 0.5, low=0.01, high=30.0)
    kw["retries"] = f.whole("retries", 1, within=(0, 5))
    kw["pause"] = f.duration("pause", 0.0, high=10.0)
    kw["drain"] = f.duration("drain", None, high=30.0)
    kw["gap"] = f.whole("gap", None, within=(0, 124))
    f.done()
    if btype is None or not name:
        return None
    return Bus(name=name, type=btype, line=node.line, **kw)


def _serial(f: _Fields, btype: str) -> SerialSettings:
    """A serial bus's line: its port (the device) and character format, defaulting per protocol."""
    device = f.text("port", "", required=True)
    if device and not device.startswith("/"):
        f.problem("port", f'"{device}" must be a device path such as /dev/ttyUSB0')
    default_baud, default_parity = SERIAL_DEFAULTS[btype]
    return SerialSettings(
        device,
        baudrate=f.whole("baudrate", default_baud, among=BAUD_RATES),
        parity=f.choice("parity", PARITIES, default_parity),
        stopbits=f.whole("stopbits", 1, among=(1, 2)),
        bytesize=f.whole("bytesize", 8, among=(7, 8)),
    )


def _meters(
    node: Node | None, sink: Sink, buses: dict[str, Bus], base: Path, categories: dict[str, str]
) -> list[Meter]:
    meters: list[Meter] = []
    seen: dict[str, int] = {}
    for where, item in items(node, "meters", sink):
        meter = _meter(item, where, sink, buses, base, categories)
        if meter is None:
            continue
        if meter.id in seen:
            sink.add(item.line, f"{where}.id", f"duplicate meter id (first on line {seen[meter.id]})", meter.id)
            continue
        seen[meter.id] = item.line
        meters.append(meter)
    return meters


def _meter(
    node: Node, where: str, sink: Sink, buses: dict[str, Bus], base: Path, categories: dict[str, str]
) -> Meter | None:
    f = _Fields(node, where, sink)
    if not f.ok:
        return None
    mid = _identity(f, "id")
    bus, btype = _meter_bus(f, buses)
    address = _address(f, btype)
    model_ref = f.text("model", "", required=True)
    model = _carried(f, _model(f, model_ref, base, sink), bus, btype)
    interval = _interval(f)
    category = _category(f, categories)
    points, calibration, replacements = _points(f, model), _calibration(f, model), _replacements(f, model)
    datacenter_id = _meter_datacenter_id(f)
    function_ids = _function_ids(f, model)
    f.done()
    if model is None or not mid or not bus:
        return None
    return Meter(
        mid,
        bus,
        address,
        model,
        model_ref,
        interval,
        category,
        points,
        calibration,
        replacements=replacements,
        line=node.line,
        where=where,
        address_line=f.line("address"),
        datacenter_id=datacenter_id,
        function_ids=function_ids,
    )


def _meter_datacenter_id(f: _Fields) -> str | None:
    """The meter's number for the data centre (``<meter id>``), when not its position in the list."""
    value = f.get("datacenter_id", (str, int), None)
    if value is None:
        return None
    text = str(value)
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,20}", text):
        f.problem("datacenter_id", f'"{_printable(text)}" must be 1..20 letters, digits, _ or -')
        return None
    return text


def _function_ids(f: _Fields, model: Model | None) -> dict[str, str]:
    """``function_ids: {point: id}``: the data centre's function ids, over the defaults
    (collector/uplink/functions.py)."""
    node = f.raw("function_ids")
    if node is None or node.value is None:
        return {}
    p = Fields(node, f.sub("function_ids"), f.sink, f.label)
    out: dict[str, str] = {}
    for name in list(p.data):
        value = p.get(name, (str, int), None)
        if model is not None and not model.has(name):
            p.problem(name, f'"{name}" is not a point of {model.name}{suggest(name, [x.name for x in model.points])}')
        elif value is not None and not re.fullmatch(r"[0-9A-Za-z_-]{1,20}", str(value)):
            p.problem(name, f'"{_printable(str(value))}" must be 1..20 letters, digits, _ or -')
        elif value is not None:
            out[name] = str(value)
    return out


def _meter_bus(f: _Fields, buses: dict[str, Bus]) -> tuple[str, str | None]:
    """The bus a meter is on, and its type (None: not a bus defined above)."""
    bus: str = f.text("bus", "", required=True)
    if bus and bus not in buses:
        known = ", ".join(sorted(buses)) or "none defined"
        f.problem("bus", f'unknown bus "{bus}"{suggest(bus, buses.keys())} (buses: {known})')
    return bus, buses[bus].type if bus in buses else None


def _interval(f: _Fields) -> float:
    """How often a meter is read: slots align only if it divides a day."""
    interval: float = f.duration("interval", 60.0, low=1.0, high=DAY)
    if f.has("interval") and (DAY % interval) != 0:
        f.problem("interval", "must divide a day evenly (e.g. 1s, 10s, 1m, 5m, 15m, 1h) so slots align")
    return interval


def _carried(f: _Fields, model: Model | None, bus: str, btype: str | None) -> Model | None:
    """The model, having said so when the bus does not carry its protocol."""
    if model is not None and btype is not None and model.protocol not in BUS_PROTOCOLS[btype]:
        f.problem(
            "model",
            f'{model.name} speaks {model.protocol}; bus "{bus}" is a {btype} bus '
            f"(it carries {' or '.join(BUS_PROTOCOLS[btype])})",
        )
    return model


def _category(f: _Fields, categories: dict[str, str]) -> str | None:
    """An energy classification code, from the national table or the site's."""
    category: str | None = f.get("category", str)
    if category is not None and not CATEGORY.fullmatch(category):
        f.problem("category", f'"{category}" is not an energy classification code like "01A00"')
    elif category is not None and category not in categories:
        f.problem(
            "category",
            f'unknown code "{category}" (not in the national table nor under categories: in this file)'
            f"{suggest(category, categories)}",
        )
    return category


def _address(f: _Fields, btype: str | None) -> int | str:
    """A Modbus unit id 1..247, or a DL/T 645 (12 digits) / CJ/T 188 (14 digits) address as a string."""
    if btype in ("dlt645", "cjt188"):
        digits = 12 if btype == "dlt645" else 14
        node = f.raw("address")
        if node is None or node.value is None:
            f.get("address", str, "", required=True)
            return ""
        if not isinstance(node.value, str) or not re.fullmatch(rf"[0-9]{{{digits}}}", node.value):
            hint = "; quote it so leading zeros are kept" if isinstance(node.value, int) else ""
            f.problem(
                "address",
                f'must be the {digits}-digit meter address as printed on the meter, e.g. "{"0" * (digits - 1)}1"{hint}',
            )
        return str(node.value)
    address: int = f.whole("address", 0, within=(1, 247), what=" (Modbus unit id)", required=True)
    return address


def _model(f: Fields, ref: str, base: Path, sink: Sink) -> Model | None:
    if not ref:
        return None
    path = registry.locate(ref, base)
    if path is None:
        f.problem(
            "model", f'unknown model "{ref}"{suggest(ref, registry.names())} (`meter-collector models list` shows them)'
        )
        return None
    if not path.exists():
        f.problem("model", f'model file "{path}" does not exist')
        return None
    try:
        return registry.load(ref, base)
    except ProblemsError as exc:
        f.problem("model", f'model file "{path}" has {len(exc.problems)} error(s), listed with its name')
        sink.problems.extend(exc.problems)
        return None


def _points(f: Fields, model: Model | None) -> tuple[str, ...]:
    node = f.raw("points")
    default = tuple(p.name for p in model.published) if model else ()
    if node is None or node.value is None:
        return default
    names = node.plain()
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        f.problem("points", "must be a list of point names, e.g. [energy_import, active_power]")
        return default
    if not names:
        f.problem("points", "must list at least one point; leave it out to read every point")
        return default
    if model is None:
        return tuple(names)
    known = [p.name for p in model.points]
    ok = []
    for name in names:
        if not model.has(name):
            f.problem("points", f'"{name}" is not a point of {model.name}{suggest(name, known)}')
        else:
            ok.append(name)
    if len(set(ok)) != len(ok):
        f.problem("points", "lists a point twice")
    return tuple(dict.fromkeys(ok))


def _calibration(f: Fields, model: Model | None) -> Calibration:
    node = f.raw("calibration")
    if node is None or node.value is None:
        return Calibration()
    c = _Fields(node, f.sub("calibration"), f.sink, f.label)
    ct_ratio, pt_ratio = c.number("ct_ratio", 1.0, above=0), c.number("pt_ratio", 1.0, above=0)
    points: dict[str, PointCalibration] = {}
    pnode = c.raw("points")
    if pnode is not None and pnode.value is not None:
        p = Fields(pnode, c.sub("points"), f.sink, f.label)
        for name in list(p.data):
            if model is not None and not model.has(name):
                p.raw(name)
                known = [x.name for x in model.points]
                p.problem(name, f'"{name}" is not a point of {model.name}{suggest(name, known)}')
                continue
            pc = _Fields(p.raw(name) or Node({}, pnode.line), p.sub(name), f.sink, f.label)
            points[name] = _point_calibration(pc, name, model)
        p.done()
    c.done()
    return Calibration(ct_ratio, pt_ratio, points)


def _point_calibration(pc: _Fields, name: str, model: Model | None) -> PointCalibration:
    scale = pc.get("scale", float, 1.0)
    if scale == 0:
        pc.problem("scale", "must not be 0")
    offset = pc.get("offset", float, 0.0)
    max_rate = pc.number("max_rate", None, above=0, why=" (units per hour: kW for an energy counter)")
    if (
        max_rate is not None
        and model is not None
        and model.has(name)
        and model.point(name).nature is not Nature.COUNTER
    ):
        pc.problem("max_rate", f"{name} is not a counter")
    pc.done()
    return PointCalibration(scale, offset, max_rate)


def _replacements(f: Fields, model: Model | None) -> tuple[Replacement, ...]:
    out: list[Replacement] = []
    for where, node in items(f.raw("replacements"), f.sub("replacements"), f.sink):
        r = Fields(node, where, f.sink, f.label)
        if not r.ok:
            continue
        at = _at(r)
        point = r.get("point", str, "", required=True)
        if point and model is not None:
            if not model.has(point):
                r.problem(
                    "point", f'"{point}" is not a point of {model.name}{suggest(point, [p.name for p in model.points])}'
                )
            elif model.point(point).nature is not Nature.COUNTER:
                r.problem("point", f"{point} is not a counter: only counters carry over a replacement")
        old_final = r.get("old_final", float, None, required=True)
        new_first = r.get("new_first", float, None, required=True)
        r.done()
        if at is not None and point and old_final is not None and new_first is not None:
            out.append(Replacement(at, point, old_final, new_first, node.line))
    return tuple(sorted(out, key=lambda x: x.at))


def _at(r: Fields) -> float | None:
    """When a meter was replaced: a time with its zone (``2026-11-03T10:00:00+08:00``), as unix seconds."""
    text = r.get("at", (str, datetime), None, required=True)
    if isinstance(text, datetime):
        text = text.isoformat()
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is not None:
            return when.timestamp()
        r.problem("at", f'"{text}" needs a time zone, e.g. 2026-11-03T10:00:00+08:00')
    except ValueError:
        r.problem("at", f'"{text}" is not a time like 2026-11-03T10:00:00+08:00')
    return None


def _across_datacenter(dc: Datacenter, meters: list[Meter], sink: Sink) -> None:
    """Each reported meter (one with a category, sent as ``coding``) has a data-centre number of its
    own, function ids that differ, and a reading in every period."""
    numbers: dict[str, Meter] = {}
    for n, m in enumerate(meters, start=1):
        if m.category is None:
            sink.warn(
                m.line,
                f"{m.where}.category",
                "is not set: the meter is not reported to the data centre (its category is sent as coding)",
                m.id,
            )
            continue
        number = m.datacenter_id or str(n)
        if number in numbers:
            first = numbers[number]
            sink.add(
                m.line,
                f"{m.where}.datacenter_id",
                f'meters "{first.id}" and "{m.id}" both have data-centre number {number}',
                m.id,
            )
        numbers.setdefault(number, m)
        ids = functions_of(m)
        if len(set(ids.values())) != len(ids):
            sink.add(m.line, f"{m.where}.function_ids", "gives two points one function id", m.id)
        if dc.period % m.interval != 0:
            sink.warn(
                m.line,
                f"{m.where}.interval",
                f"does not divide datacenter.period ({dc.period:g} s): some periods get no reading of this meter",
                m.id,
            )


def functions_of(meter: Meter) -> dict[str, str]:
    """The meter's published points that go to the data centre -> their function ids: the default
    table of the meter's kind (collector/uplink/functions.py), then the meter's own function_ids."""
    table = {**DEFAULT_FUNCTION_IDS.get(meter.model.kind, {}), **meter.function_ids}
    return {p: table[p] for p in meter.points if p in table}


def _across(meters: list[Meter], buses: dict[str, Bus], sink: Sink) -> None:
    """Rules across items: two meters answering to one address on one bus."""
    by_slot: dict[tuple[str, int | str], Meter] = {}
    for m in meters:
        if m.bus not in buses:
            continue
        key = (m.bus, m.address)
        if key in by_slot:
            first = by_slot[key]
            bus = buses[m.bus]
            sink.add(
                m.address_line,
                f"{m.where}.address",
                f'meters "{first.id}" and "{m.id}" both use address {m.address} on bus "{bus.name}"',
                m.id,
            )
        else:
            by_slot[key] = m
