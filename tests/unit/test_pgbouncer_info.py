"""The pgbouncer_info module: every restart reason, every other decision, and the readers against real
processes and files (its systemctl calls are exercised on the lab's hosts by tests/e2e)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins" / "modules"))

import pgbouncer_info as info  # noqa: E402

SETTINGS_PATH = "/etc/pgbouncer/restart-settings.json"
WANTED = {
    "autopgpool_toml": {"max_client_conn": 400, "listen_port": 6432},
    "instances": {"listen_addr": "10.0.0.2", "base_port": 6432, "socket_root": "/run/pgbouncer"},
}
EXE = "/opt/pgbouncer/1.25.1/bin/pgbouncer"


def _instance(**overrides: Any) -> dict[str, Any]:
    state = {
        "load": "loaded", "active": "active", "enabled": "enabled", "main_pid": 100, "started": 2000,
        "exe": EXE, "need_daemon_reload": False, "replaced_libraries": [], "nofile": 4096,
        "loaded_current": True,
    }  # fmt: skip
    state.update(overrides)
    return state


def _reasons(instances: dict[str, dict[str, Any]], **kwargs: Any) -> list[str]:
    args: dict[str, Any] = {
        "ids": [int(n) for n in instances], "installed_exe": EXE, "unit_mtime": 1000, "settings_mtime": 1000,
        "recorded": WANTED, "wanted": WANTED, "settings_path": SETTINGS_PATH,
    }  # fmt: skip
    args.update(kwargs)
    return info.restart_reasons(instances, **args)


# --- Restart reasons ---


def test_nothing_to_restart_when_every_instance_started_after_the_files_and_runs_the_build() -> None:
    assert _reasons({"1": _instance(), "2": _instance()}) == []


def test_restart_only_setting_changed_names_the_setting() -> None:
    recorded = {**WANTED, "autopgpool_toml": {**WANTED["autopgpool_toml"], "max_client_conn": 200}}
    reasons = _reasons({"1": _instance(), "2": _instance()}, recorded=recorded, settings_mtime=3000)
    assert reasons == ["restart-only settings changed (max_client_conn), instances 1, 2 started before"]


def test_added_and_removed_restart_only_settings_are_named() -> None:
    recorded = {**WANTED, "autopgpool_toml": {"listen_port": 6432, "so_reuseport": 1}}
    reasons = _reasons({"1": _instance()}, recorded=recorded, settings_mtime=3000)
    assert reasons == [
        "restart-only settings changed (max_client_conn, so_reuseport), instances 1 started before"
    ]


def test_changed_instance_listeners_are_named() -> None:
    recorded = {**WANTED, "instances": {**WANTED["instances"], "base_port": 7432}}
    reasons = _reasons({"1": _instance()}, recorded=recorded, settings_mtime=3000)
    assert reasons == ["restart-only settings changed (instance listeners), instances 1 started before"]


def test_settings_file_newer_with_the_same_record_points_at_the_file() -> None:
    """An interrupted run recorded the new settings but did not restart: the names are lost, the file says."""
    reasons = _reasons({"1": _instance()}, settings_mtime=3000)
    assert reasons == [f"restart-only settings changed (see {SETTINGS_PATH}), instances 1 started before"]


def test_first_run_without_a_record_compares_with_itself() -> None:
    assert info.changed_settings(None, WANTED) == []


def test_only_instances_started_before_the_settings_are_named() -> None:
    reasons = _reasons(
        {"1": _instance(started=900), "2": _instance(started=1500)}, settings_mtime=1200, unit_mtime=0
    )
    assert reasons == [f"restart-only settings changed (see {SETTINGS_PATH}), instances 1 started before"]


def test_started_in_the_same_second_counts_as_picked_up() -> None:
    assert _reasons({"1": _instance(started=1000)}, settings_mtime=1000, unit_mtime=1000) == []


def test_changed_unit_file() -> None:
    reasons = _reasons({"1": _instance(), "2": _instance(started=5000)}, unit_mtime=3000)
    assert reasons == ["pgbouncer@.service changed, instances 1 started before"]


def test_another_binary() -> None:
    new = "/opt/pgbouncer/1.25.2/bin/pgbouncer"
    reasons = _reasons({"1": _instance(), "2": _instance(exe=new)}, installed_exe=new)
    assert reasons == [f"binary is now {new}, instances 1 run another"]


def test_binary_replaced_on_disk_counts_as_another() -> None:
    reasons = _reasons({"3": _instance(exe=EXE + " (deleted)")})
    assert reasons == [f"binary is now {EXE}, instances 3 run another"]


def test_no_executable_to_compare_is_no_reason() -> None:
    """A restarting instance has no main PID; check mode before the first build has no installed binary."""
    assert _reasons({"1": _instance(exe="")}) == []
    assert _reasons({"1": _instance(exe="/elsewhere")}, installed_exe="") == []


def test_replaced_libraries() -> None:
    instances = {
        "1": _instance(replaced_libraries=["libevent-2.1.so.7.0.1"]),
        "2": _instance(),
        "3": _instance(replaced_libraries=["libssl.so.3", "libevent-2.1.so.7.0.1"]),
    }
    libraries = "libevent-2.1.so.7.0.1, libssl.so.3"
    assert _reasons(instances) == [
        f"libraries updated on disk ({libraries}), instances 1, 3 still run the old ones"
    ]


def test_only_instances_running_before_the_run_are_judged() -> None:
    """A new instance (started by this run) or one beyond the count is not judged."""
    instances = {"1": _instance(started=10), "2": _instance(started=10)}
    assert _reasons(instances, ids=[2, 7], unit_mtime=3000, settings_mtime=0) == [
        "pgbouncer@.service changed, instances 2 started before"
    ]


def test_every_reason_at_once_in_the_warnings_order() -> None:
    recorded = {**WANTED, "autopgpool_toml": {**WANTED["autopgpool_toml"], "listen_port": 5432}}
    instances = {"1": _instance(started=10, exe="/old", replaced_libraries=["libz.so.1"])}
    reasons = _reasons(instances, recorded=recorded, settings_mtime=20, unit_mtime=20)
    assert [r.split(" ")[0] for r in reasons] == ["restart-only", "pgbouncer@.service", "binary", "libraries"]


def test_instances_are_listed_by_number() -> None:
    instances = {str(n): _instance(started=10) for n in (10, 2, 1)}
    assert _reasons(instances, unit_mtime=20, settings_mtime=0) == [
        "pgbouncer@.service changed, instances 1, 2, 10 started before"
    ]


# --- Other decisions ---


def _decide(instances: dict[str, dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "wanted": [int(n) for n in instances], "active_before": [int(n) for n in instances],
        "present": [int(n) for n in instances], "file_descriptor_limit": 4096, "config_dir": "/etc/pgbouncer",
        "unit_path": "/etc/systemd/system/pgbouncer@.service",
    }  # fmt: skip
    args.update(kwargs)
    return info.decide(instances, **args)


def test_a_converged_host_needs_nothing() -> None:
    plan = _decide({"1": _instance(), "2": _instance()})
    assert plan == {
        "running": [1, 2], "up": [1, 2], "to_reload": [], "to_relimit": [], "need_daemon_reload": False,
        "surplus_running": [], "surplus": [], "surplus_paths": [],
    }  # fmt: skip


def test_stopped_disabled_and_failed_instances_are_started() -> None:
    plan = _decide(
        {
            "1": _instance(active="inactive", main_pid=0, nofile=0, loaded_current=False),
            "2": _instance(enabled="disabled"),
            "3": _instance(active="failed", loaded_current=False),
            "4": _instance(load="not-found", active="inactive", enabled=""),
        }
    )
    assert plan["up"] == []
    assert plan["running"] == [2]
    # Only running instances get a SIGHUP or prlimit; the others read everything when they start.
    assert plan["to_reload"] == []
    assert plan["to_relimit"] == []


def test_running_instances_that_loaded_before_a_file_changed_are_reloaded() -> None:
    plan = _decide(
        {"1": _instance(loaded_current=False), "2": _instance(active="reloading", loaded_current=False)}
    )
    assert plan["to_reload"] == [1, 2]


def test_a_different_soft_limit_is_applied_to_running_instances() -> None:
    plan = _decide({"1": _instance(nofile=1024), "2": _instance()}, file_descriptor_limit=4096)
    assert plan["to_relimit"] == [1]


def test_a_unit_systemd_has_not_reloaded() -> None:
    assert _decide({"1": _instance(), "2": _instance(need_daemon_reload=True)})["need_daemon_reload"] is True


def test_instances_beyond_the_count_are_drained_stopped_and_removed() -> None:
    plan = _decide({"1": _instance()}, wanted=[1], active_before=[1, 3], present=[1, 2, 3])
    assert plan["surplus_running"] == [3]
    assert plan["surplus"] == [2, 3]
    assert plan["surplus_paths"] == [
        "/etc/pgbouncer/instance-2.ini", "/etc/pgbouncer/instance-3.ini",
        "/etc/systemd/system/pgbouncer@2.service.d", "/etc/systemd/system/pgbouncer@3.service.d",
    ]  # fmt: skip


# --- Readers ---


def test_active_units_from_list_units() -> None:
    listing = (
        "pgbouncer@1.service  loaded active running PgBouncer instance 1\n"
        "pgbouncer@10.service loaded active running PgBouncer instance 10\n"
        "pgbouncer-exporter.service loaded active running other\n"
    )
    assert info.active_units(listing) == [1, 10]
    assert info.active_units("") == []


def test_present_instances_from_files_and_links(tmp_path: Path) -> None:
    config, wants = tmp_path / "etc", tmp_path / "wants"
    config.mkdir()
    wants.mkdir()
    for name in ("instance-1.ini", "instance-12.ini", "pgbouncer.ini", "userlist.txt"):
        (config / name).write_text("")
    (wants / "pgbouncer@3.service").symlink_to("/nonexistent")  # a link to a unit that is gone still counts
    (wants / "ssh.service").write_text("")
    (config / "instance-x.ini").write_text("")
    assert info.present_instances(str(config), str(wants)) == [1, 3, 12]
    assert info.configured_instances(str(config)) == [1, 12]


def test_recorded_settings(tmp_path: Path) -> None:
    path = tmp_path / "restart-settings.json"
    assert info.recorded_settings(str(path)) is None
    path.write_text('{"autopgpool_toml": {"listen_port": 6432}, "instances": {}}\n')
    assert info.recorded_settings(str(path)) == {"autopgpool_toml": {"listen_port": 6432}, "instances": {}}


def test_unit_properties_and_start_time() -> None:
    props = info.unit_properties(
        "LoadState=loaded\nActiveState=active\nMainPID=4242\n"
        "ExecMainStartTimestamp=@1764660000\nNeedDaemonReload=no\n"
    )
    assert props["MainPID"] == "4242"
    assert info.started_at(props["ExecMainStartTimestamp"]) == 1764660000
    assert info.started_at("") == 0
    assert info.started_at("n/a") == 0


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real process with a soft NOFILE limit of 1000 that maps a copy of libz, then deleted on disk."""
    libz = next(Path(p) for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
                                  "/lib/aarch64-linux-gnu/libz.so.1") if Path(p).exists())  # fmt: skip
    copy = tmp_path / "libz.so.1"
    shutil.copy(libz, copy)
    # The child lowers its own soft limit (a preexec_fn is unsafe with threads), maps the copy and waits.
    script = (
        "import ctypes, resource, sys\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1000, hard))\n"
        f"ctypes.CDLL({str(copy)!r})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    try:
        yield proc, copy
    finally:
        proc.kill()
        proc.wait()


def test_reads_a_real_process(child: tuple[subprocess.Popen[str], Path]) -> None:
    proc, library = child
    assert info.executable(proc.pid) == os.path.realpath(sys.executable)
    assert info.soft_nofile(proc.pid) == 1000
    assert info.replaced_libraries(proc.pid) == []
    library.unlink()
    assert info.replaced_libraries(proc.pid) == ["libz.so.1"]


def test_a_process_that_is_gone_reads_as_nothing() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert info.executable(proc.pid) == ""
    assert info.soft_nofile(proc.pid) == 0
    assert info.replaced_libraries(proc.pid) == []


def _systemctl(answers: dict[str, str]) -> info.Run:
    """systemctl's answers as the lab's hosts print them, keyed by subcommand."""

    def run(args: Sequence[str]) -> str:
        return answers[args[0]]

    return run


def test_run_reads_and_decides(tmp_path: Path, child: tuple[subprocess.Popen[str], Path]) -> None:
    proc, _ = child
    config, runtime = tmp_path / "etc", tmp_path / "run"
    (runtime / "1").mkdir(parents=True)
    config.mkdir()
    for name in ("pgbouncer.ini", "instance-1.ini", "instance-2.ini"):
        (config / name).write_text("")
    settings = config / "restart-settings.json"
    settings.write_text("{}")
    (runtime / "1" / "loaded").write_text("")
    unit = tmp_path / "pgbouncer@.service"
    unit.write_text("")
    now = time.time()
    os.utime(unit, (now - 100, now - 100))
    os.utime(settings, (now - 100, now - 100))
    os.utime(config / "pgbouncer.ini", (now + 5, now + 5))  # written after instance 1's last load
    answers = {
        "list-units": "pgbouncer@1.service loaded active running PgBouncer instance 1\n",
        "show": f"LoadState=loaded\nActiveState=active\nMainPID={proc.pid}\n"
        f"ExecMainStartTimestamp=@{int(now)}\nNeedDaemonReload=no\n",
        "is-enabled": "enabled\n",
    }
    params = {
        "config_dir": str(config), "restart_settings_path": str(settings), "wants_dir": str(tmp_path / "no"),
        "instances": [1], "runtime_root": str(runtime), "unit_path": str(unit), "binary": sys.executable,
        "reload_files": [str(config / "pgbouncer.ini")], "file_descriptor_limit": 4096, "active_before": [1],
        "recorded_restart_settings": {}, "restart_settings": {},
    }  # fmt: skip
    result = info.run(params, systemctl=_systemctl(answers))
    assert result["active"] == [1]
    assert result["present"] == [1, 2]
    assert result["restart_settings"] == {}
    assert result["instances"]["1"]["nofile"] == 1000
    assert result["to_reload"] == [1]
    assert result["to_relimit"] == [1]
    assert result["surplus"] == [2]
    assert result["restart_reasons"] == []
    first = info.run(
        {"config_dir": str(config), "restart_settings_path": str(settings)}, systemctl=_systemctl(answers)
    )
    assert set(first) == {
        "changed",
        "active",
        "configured",
        "present",
        "restart_settings",
        "client_tls_sslmode",
    }


# --- The client TLS mode the running instances answer with (tls_on.yml steps through prefer) --------------


def test_client_tls_sslmode_of_the_installed_file() -> None:
    assert info.client_tls_sslmode(None) == ""
    assert (
        info.client_tls_sslmode("[databases]\napp = host=pg1\n[pgbouncer]\nlisten_port = 6432\n") == "disable"
    )
    ini = "[pgbouncer]\nclient_tls_sslmode = prefer\n;client_tls_sslmode = disable\nCLIENT_TLS_SSLMODE=On\n"
    assert info.client_tls_sslmode(ini) == "on"


def test_client_tls_sslmode_outside_the_pgbouncer_section_is_not_a_setting() -> None:
    ini = "[databases]\nclient_tls_sslmode = host=pg1 dbname=x\n[pgbouncer]\nauth_type = hba\n"
    assert info.client_tls_sslmode(ini) == "disable"
    assert info.client_tls_sslmode("[pgbouncer]\n  # client_tls_sslmode = require\n") == "disable"


def test_run_reads_the_mode_of_the_shared_file(tmp_path: Path) -> None:
    params = {"config_dir": str(tmp_path), "restart_settings_path": str(tmp_path / "restart-settings.json")}
    assert info.run(params, systemctl=lambda args: "")["client_tls_sslmode"] == ""
    (tmp_path / "pgbouncer.ini").write_text("[pgbouncer]\nclient_tls_sslmode = verify-full\n")
    assert info.run(params, systemctl=lambda args: "")["client_tls_sslmode"] == "verify-full"
