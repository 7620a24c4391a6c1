"""What `check` must refuse because `run` could not live with it: files, storage, serial devices,
numbers and names that only look valid, and YAML built to hang the parser.

These need file modes, symlinks, timing or many variants, so they build their configs in tmp_path
from tests/config/valid.yaml; the single-error cases are folders under cases/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from collector import config as config_module
from collector.cli.commands import main
from collector.config import load_config
from drivers.source import ProblemsError

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "config" / "example.yaml"
VALID = (HERE / "valid.yaml").read_text()
URL_LINE = "  url: mqtt://127.0.0.1:1883\n"
AS_ROOT = os.geteuid() == 0  # root reads and writes whatever the modes say


def site(folder: Path, text: str = VALID) -> Path:
    path = folder / "site.yaml"
    path.write_text(text)
    return path


def with_mqtt(*lines: str, url: str = "mqtt://127.0.0.1:1883") -> str:
    """valid.yaml with these lines after mqtt.url (which is on line 4: the first added is line 5)."""
    return VALID.replace(URL_LINE, f"  url: {url}\n" + "".join(f"  {x}\n" for x in lines))


def errors(path: Path, **kw: bool) -> list[str]:
    with pytest.raises(ProblemsError) as err:
        load_config(path, **kw)
    return [str(p) for p in err.value.problems]


def secret(folder: Path, mode: int = 0o600) -> Path:
    path = folder / "mqtt.secret"
    path.write_text("hunter2\n")
    path.chmod(mode)
    return path


# --- the shipped example -------------------------------------------------------------------------


def test_the_example_is_valid_on_a_machine_that_has_its_files(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    text = text.replace("/etc/meter-collector/", f"{tmp_path}/etc/").replace(
        "/var/lib/meter-collector/", f"{tmp_path}/state/"
    )
    (tmp_path / "etc").mkdir()
    secret(tmp_path / "etc")
    (tmp_path / "etc" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(site(tmp_path, text))
    assert config.warnings == []
    assert config.mqtt is not None and config.mqtt.password_file == f"{tmp_path}/etc/mqtt.secret"
    assert not (tmp_path / "state").exists(), "check must create nothing"


def test_the_example_without_its_files_names_both(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/etc/meter-collector/", f"{tmp_path}/etc/")
    path = site(tmp_path, text)
    assert errors(path) == [
        f"{path}:20 mqtt.password_file: {tmp_path}/etc/mqtt.secret does not exist",
        f"{path}:22 mqtt.ca_file: {tmp_path}/etc/ca.pem does not exist",
    ]
    load_config(path, check_files=False)  # what `read` needs is all there


# --- files named under mqtt ----------------------------------------------------------------------


def test_a_readable_private_password_file_is_fine(tmp_path: Path) -> None:
    pw = secret(tmp_path)
    config = load_config(site(tmp_path, with_mqtt("username: gw1", f"password_file: {pw}")))
    assert config.warnings == []


def test_a_password_file_every_user_can_read_is_a_warning_not_an_error(tmp_path: Path) -> None:
    pw = secret(tmp_path, 0o644)
    path = site(tmp_path, with_mqtt("username: gw1", f"password_file: {pw}"))
    config = load_config(path)
    assert config.warnings == [
        f"{path}:6 mqtt.password_file: {pw} can be read by every user on this machine (mode 0644); chmod 600 or 640 it"
    ]
    assert main(["check", "-c", str(path)]) == 0
    assert load_config(path, check_files=False).warnings == []


def test_a_password_file_its_group_can_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = secret(tmp_path, 0o640)
    path = site(tmp_path, with_mqtt("username: gw1", f"password_file: {pw}"))
    # As documented (root:meter-collector 0640): one user besides the owner reads it, the daemon's.
    monkeypatch.setattr(config_module, "_group_readers", lambda gid, owner: ("meter-collector", {"meter-collector"}))
    assert load_config(path).warnings == []
    monkeypatch.setattr(config_module, "_group_readers", lambda gid, owner: ("users", {"pi", "guest"}))
    assert load_config(path).warnings == [
        f"{path}:6 mqtt.password_file: {pw} can be read by group users: guest, pi (mode 0640); "
        "give it a group only the daemon's user is in, or chmod 600 it"
    ]


def test_a_password_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    path = site(tmp_path, with_mqtt(f"password_file: {tmp_path / 'secrets'}"))
    assert errors(path) == [f"{path}:5 mqtt.password_file: {tmp_path / 'secrets'} is a directory, not a file"]


@pytest.mark.skipif(AS_ROOT, reason="root can read a file of mode 000")
def test_an_unreadable_password_file(tmp_path: Path) -> None:
    pw = secret(tmp_path, 0o000)
    path = site(tmp_path, with_mqtt(f"password_file: {pw}"))
    assert errors(path) == [f"{path}:5 mqtt.password_file: {pw} is not readable (Permission denied)"]


def test_an_unreadable_file_as_any_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = secret(tmp_path)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    path = site(tmp_path, with_mqtt(f"password_file: {pw}").replace("path: buffer.db", "path: ':memory:'"))
    assert errors(path) == [f"{path}:5 mqtt.password_file: {pw} is not readable (Permission denied)"]


def test_every_tls_file_is_checked_on_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    path = site(
        tmp_path,
        with_mqtt("ca_file: ca.pem", "cert_file: client.pem", f"key_file: {tmp_path}/client.key", url="mqtts://b"),
    )
    assert errors(path) == [
        f"{path}:6 mqtt.cert_file: client.pem does not exist (that is {tmp_path}/client.pem)",
        f"{path}:7 mqtt.key_file: {tmp_path}/client.key does not exist",
    ]


def test_mqtts_without_a_ca_file_uses_the_system_cas(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, with_mqtt(url="mqtts://broker.example.org")))
    assert config.mqtt is not None and config.mqtt.tls and config.mqtt.ca_file is None


def test_a_ca_file_without_tls_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    path = site(tmp_path, with_mqtt("ca_file: ca.pem"))
    assert load_config(path).warnings == [
        f"{path}:5 mqtt.ca_file: is not used: the url is mqtt:// (no TLS); TLS needs mqtts://"
    ]


def test_relative_paths_are_relative_to_the_config_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    secret(tmp_path / "etc")
    path = (tmp_path / "etc" / "site.yaml").resolve()
    path.write_text(with_mqtt("password_file: mqtt.secret").replace("path: buffer.db", "path: state/buffer.db"))
    monkeypatch.chdir(tmp_path / "elsewhere")  # as under systemd: the daemon runs from /
    config = load_config(os.path.relpath(path))
    assert config.mqtt is not None and config.mqtt.password_file == str(tmp_path / "etc" / "mqtt.secret")
    assert config.storage.path == str(tmp_path / "etc" / "state" / "buffer.db")


def test_an_empty_tls_file_name(tmp_path: Path) -> None:
    path = site(tmp_path, with_mqtt('ca_file: ""', url="mqtts://b"))
    assert errors(path) == [f"{path}:5 mqtt.ca_file: is empty; name a file or leave the key out"]


# --- storage -------------------------------------------------------------------------------------


def storage(path: str) -> str:
    return VALID.replace("  path: buffer.db", f"  path: {path}")


STORAGE_LINE = next(n for n, line in enumerate(VALID.splitlines(), 1) if line.startswith("  path: buffer.db"))


def test_storage_in_folders_yet_to_be_made_is_fine_and_nothing_is_made(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, storage(f"{tmp_path}/a/b/c/buffer.db")))
    assert config.storage.path == f"{tmp_path}/a/b/c/buffer.db"
    assert not (tmp_path / "a").exists()


def test_an_existing_buffer_file_is_fine(tmp_path: Path) -> None:
    (tmp_path / "buffer.db").write_bytes(b"")
    load_config(site(tmp_path, storage(f"{tmp_path}/buffer.db")))


def test_storage_below_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    path = site(tmp_path, storage(f"{tmp_path}/f/sub/buffer.db"))
    assert errors(path) == [
        f"{path}:{STORAGE_LINE} storage.path: {tmp_path}/f/sub/buffer.db cannot be created: "
        f"{tmp_path}/f is a file, not a folder"
    ]


def test_storage_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    path = site(tmp_path, storage(f"{tmp_path}/state"))
    assert errors(path) == [
        f"{path}:{STORAGE_LINE} storage.path: {tmp_path}/state is a directory; "
        f"name the buffer file, e.g. {tmp_path}/state/buffer.db"
    ]


@pytest.mark.skipif(AS_ROOT, reason="root writes into a folder of mode 500")
def test_storage_in_a_folder_this_user_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    path = site(tmp_path, storage(f"{tmp_path}/ro/state/buffer.db"))
    [problem] = errors(path)
    assert f"storage.path: {tmp_path}/ro/state/buffer.db cannot be created: user " in problem
    assert problem.endswith(f"cannot write in {tmp_path}/ro")


def test_storage_where_this_user_cannot_write_as_any_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    path = site(tmp_path, storage(f"{tmp_path}/buffer.db"))
    [problem] = errors(path)
    assert problem.startswith(f"{path}:{STORAGE_LINE} storage.path: {tmp_path}/buffer.db cannot be written: user ")
    assert problem.endswith(f"cannot write in {tmp_path}")


def test_the_default_storage_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    path = site(tmp_path, VALID.replace("storage:\n  path: buffer.db", "storage: {}"))
    [problem] = errors(path)
    assert "storage.path: /var/lib/meter-collector/buffer.db cannot be" in problem
    assert problem.endswith("(the default, as storage.path is not set)")


def test_an_empty_storage_path(tmp_path: Path) -> None:
    path = site(tmp_path, storage('""'))
    assert errors(path, check_files=False) == [
        f"{path}:{STORAGE_LINE} storage.path: must name the buffer file, e.g. /var/lib/meter-collector/buffer.db"
    ]


# --- serial devices ------------------------------------------------------------------------------


def two_serial_buses(first: str, second: str) -> str:
    return VALID.replace(
        "  - name: lan\n", f"  - name: rs485-2\n    type: cjt188\n    port: {second}\n  - name: lan\n"
    ).replace("port: /dev/ttyUSB0", f"port: {first}", 1)


def test_a_symlink_to_another_bus_device_is_that_device(tmp_path: Path) -> None:
    (tmp_path / "ttyUSB7").touch()
    (tmp_path / "by-id").mkdir()
    (tmp_path / "by-id" / "usb-FTDI_RS485-if00-port0").symlink_to(tmp_path / "ttyUSB7")
    link = tmp_path / "by-id" / "usb-FTDI_RS485-if00-port0"
    path = site(tmp_path, two_serial_buses(f"{tmp_path}/ttyUSB7", str(link)))
    assert errors(path) == [
        f'{path}:13 buses[1] "rs485-2": port: {link} is the same device as {tmp_path}/ttyUSB7, '
        'the port of bus "rs485-1" (line 6)'
    ]
    path = site(tmp_path, two_serial_buses(str(link), f"{tmp_path}/ttyUSB7"))
    assert errors(path) == [
        f'{path}:13 buses[1] "rs485-2": port: {tmp_path}/ttyUSB7 is the same device as {link}, '
        'the port of bus "rs485-1" (line 6)'
    ]


def test_devices_that_are_not_plugged_in_are_no_problem(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, two_serial_buses("/dev/ttyUSB97", "/dev/ttyUSB98")))
    assert {b.device for b in config.buses.values() if b.serial} == {"/dev/ttyUSB97", "/dev/ttyUSB98"}


# --- numbers and names ---------------------------------------------------------------------------


REPLACEMENT = (
    "    replacements:\n"
    '      - {at: "2026-11-03T10:00:00+08:00", point: energy_import, old_final: OLD, new_first: NEW}\n'
)


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf", ".NaN", "+.Inf"])
@pytest.mark.parametrize(
    ("snippet", "field"),
    [
        ("      ct_ratio: X\n", "calibration.ct_ratio"),
        ("      pt_ratio: X\n", "calibration.pt_ratio"),
        ("      points: {energy_import: {scale: X}}\n", "calibration.points.energy_import.scale"),
        ("      points: {energy_import: {offset: X}}\n", "calibration.points.energy_import.offset"),
        ("      points: {energy_import: {max_rate: X}}\n", "calibration.points.energy_import.max_rate"),
        (REPLACEMENT.replace("OLD", "X").replace("NEW", "0.5"), "replacements[0].old_final"),
        (REPLACEMENT.replace("OLD", "1.5").replace("NEW", "X"), "replacements[0].new_first"),
    ],
)
def test_numbers_must_be_finite(tmp_path: Path, bad: str, snippet: str, field: str) -> None:
    text = VALID.replace("      ct_ratio: 40\n", snippet.replace("X", bad))
    path = site(tmp_path, text)
    [problem] = errors(path)
    shown = "nan" if "nan" in bad.lower() else ("-inf" if bad.startswith("-") else "inf")
    assert problem.endswith(f'meters[0] "main": {field}: must be a finite number, not {shown}')


@pytest.mark.parametrize("char", ["\\0", "\\x01", "\\t", "\\n", "\\e", "\\x7f"])
@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("  id: test-gw\n", '  id: "test-gwC"\n', "gateway.id"),
        ("  id: test-gw\n", '  id: test-gw\n  site: "tingC hu"\n', "gateway.site"),
        ("  id: test-gw\n", '  id: test-gw\n  building: "BC01"\n', "gateway.building"),
        (URL_LINE, URL_LINE + '  topic_prefix: "metersCx"\n', "mqtt.topic_prefix"),
        (URL_LINE, URL_LINE + '  client_id: "gwC"\n', "mqtt.client_id"),
        (URL_LINE, URL_LINE + '  username: "gwC"\n', "mqtt.username"),
        (URL_LINE, '  url: "mqtt://127.0.0.1C:1883"\n', "mqtt.url"),
        ("  - name: lan\n", '  - name: "lanC"\n', 'buses[1] "lan'),
        ("  - id: sub\n", '  - id: "subC"\n', 'meters[1] "sub'),
    ],
)
def test_no_control_characters_in_names(tmp_path: Path, char: str, old: str, new: str, field: str) -> None:
    path = site(tmp_path, VALID.replace(old, new.replace("C", char), 1))
    problems = errors(path)
    assert any(field in p and "must not contain control characters (\\x" in p for p in problems), problems


def test_a_name_cannot_end_in_a_newline(tmp_path: Path) -> None:
    # `^...$` matches before a final newline; the id pattern must match the whole name.
    path = site(tmp_path, VALID.replace("  id: test-gw\n", '  id: "test-gw\\n"\n'))
    assert errors(path) == [f"{path}:2 gateway.id: must not contain control characters (\\x0a at position 8)"]


# --- YAML built to hang the parser ---------------------------------------------------------------


def timed_check(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    start = time.monotonic()
    assert main(["check", "-c", str(path)]) == 2
    assert time.monotonic() - start < 10
    return capsys.readouterr().err


def test_a_billion_laughs_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = site(tmp_path, "\n".join(lines) + "\n" + VALID)
    err = timed_check(path, capsys)
    assert f"{path}:1 YAML: more than 100000 values (counting every use of an alias)" in err


@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ("{a: ", "}")])
def test_100000_levels_of_nesting_are_refused_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opening: str, closing: str
) -> None:
    path = site(tmp_path, VALID + "categories: " + opening * 100_000 + "1" + closing * 100_000 + "\n")
    err = timed_check(path, capsys)
    assert "YAML: nested more than 64 levels deep" in err and "Traceback" not in err


def test_block_nesting_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "".join(f"{'  ' * i}k:\n" for i in range(5000))
    err = timed_check(site(tmp_path, deep), capsys)
    assert f"{tmp_path}/site.yaml:64 YAML: nested more than 64 levels deep" in err


def test_an_anchor_that_contains_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = timed_check(site(tmp_path, VALID + "categories: &loop [*loop]\n"), capsys)
    assert "YAML: nested more than 64 levels deep (counting every use of an alias)" in err


def test_depth_built_from_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["x0: &x0 " + "[" * 40 + "]" * 40]
    lines += [f"x{i}: &x{i} " + "[" * 40 + f"*x{i - 1}" + "]" * 40 for i in range(1, 5)]
    err = timed_check(site(tmp_path, "\n".join(lines) + "\n" + VALID), capsys)
    assert "YAML: nested more than 64 levels deep (counting every use of an alias)" in err


def test_a_config_of_a_big_site_still_loads(tmp_path: Path) -> None:
    # 240 meters on 8 buses with every option set: far below the limits.
    buses = "".join(f"  - {{name: bus-{b}, type: tcp, host: 10.0.0.{b}, timeout: 1s, retries: 1}}\n" for b in range(8))
    meters = "".join(
        f"  - {{id: m{i}, bus: bus-{i % 8}, address: {i // 8 + 1}, model: eastron-sdm630, interval: 1m,"
        f' category: "01A00", calibration: {{ct_ratio: 40,'
        " points: {energy_import: {offset: 1.5, max_rate: 400}}}}\n"
        for i in range(240)
    )
    text = f"gateway: {{id: big}}\nstorage: {{path: buffer.db}}\nbuses:\n{buses}meters:\n{meters}"
    assert len(load_config(site(tmp_path, text)).meters) == 240
