"""The gRPC storage proxy: grpc:// URLs end to end, heartbeats relayed and dead trials swept by
the proxy, the token, and loopback by default. (SIGKILL and SIGTERM through the proxy are in
test_faults and test_search, beside the same tests on the other storages.)"""

import contextlib
import ipaddress
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import FINISHED, cli, free_port, trials_of, wait_for, write_study
from optuna.trial import TrialState
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.core.network import is_loopback
from carbrand_search.core.process import stop_once
from carbrand_search.search import proxy
from carbrand_search.search.proxy import (
    BEAT_KEY,
    TOKEN_ENV,
    ProxyOptions,
    check_listen,
    parse,
    serve,
    sweep_stale,
)
from carbrand_search.search.storage import open_storage

runner = CliRunner()


def _listening_hosts(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (Linux /proc/net/tcp and tcp6;
    an IPv4-mapped IPv6 address, as gRPC binds, as its IPv4 address)."""
    hosts = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) != port or state != "0A":  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(
                bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(raw)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            hosts.add(str(mapped or ip))
    return hosts


@contextlib.contextmanager
def _proxy_in_thread(tmp_path: Path, heartbeat_s: int) -> Iterator[tuple[str, str]]:
    """(proxy URL, database URL): a proxy served from a thread of this process, over SQLite;
    stopped afterwards. It sweeps stale trials every `heartbeat_s`."""
    database = f"sqlite:///{tmp_path / 'proxied.db'}"
    options = ProxyOptions(database, port=free_port(), heartbeat_s=heartbeat_s)
    stop, said = threading.Event(), []
    thread = threading.Thread(target=serve, args=(options, said.append, stop), daemon=True)
    thread.start()
    wait_for(lambda: bool(said), timeout_s=30)
    yield f"grpc://127.0.0.1:{options.port}", database
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def in_thread(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A proxy in a thread that sweeps every second (heartbeat 1 s)."""
    with _proxy_in_thread(tmp_path, heartbeat_s=1) as urls:
        yield urls


def test_proxy_listens_on_loopback_by_default(in_thread: tuple[str, str]) -> None:
    port = parse(in_thread[0]).port
    assert _listening_hosts(port) == {"127.0.0.1"}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # asked, not optimize
def test_heartbeats_are_relayed_and_a_silent_trial_is_swept_by_the_proxy(
    in_thread: tuple[str, str],
) -> None:
    url, database = in_thread
    client = open_storage(url, heartbeat_s=1)
    study = optuna.create_study(study_name="beats", storage=client)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    client.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    direct = open_storage(database)
    stored = direct.get_trial(trial._trial_id)
    assert BEAT_KEY not in stored.system_attrs  # a heartbeat row, not an attribute
    assert direct.get_trial(trial._trial_id).state == TrialState.RUNNING
    # No more beats (its worker "died"): the proxy fails it after 4 heartbeats and queues it.
    wait_for(lambda: direct.get_trial(trial._trial_id).state == TrialState.FAIL, timeout_s=30)
    found = optuna.load_study(study_name="beats", storage=direct).get_trials()
    retry = [t for t in found if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].params == stored.params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_beat_through_the_proxy_keeps_a_trial_from_the_sweep(tmp_path: Path) -> None:
    # No sleeping against the grace period (a loaded machine can stall a thread past it):
    # both trials' heartbeats are made an hour old, one beats through the proxy, and one sweep
    # with a 4-minute grace decides. The proxy's own sweep (hourly here) never runs meanwhile.
    with _proxy_in_thread(tmp_path, heartbeat_s=3600) as (url, database):
        client = open_storage(url, heartbeat_s=60)
        study = optuna.create_study(study_name="alive", storage=client)
        beating, silent = study.ask(), study.ask()
        for trial in (beating, silent):
            client.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        with sqlite3.connect(database.removeprefix("sqlite:///")) as db:
            aged = db.execute(
                "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')"
            ).rowcount
        assert aged == 2
        client.record_heartbeat(beating._trial_id)  # type: ignore[attr-defined]
        direct = open_storage(database, heartbeat_s=60)
        assert sweep_stale(direct, print)
        assert direct.get_trial(beating._trial_id).state == TrialState.RUNNING
        assert direct.get_trial(silent._trial_id).state == TrialState.FAIL


def test_a_stop_signal_lets_the_sweep_under_way_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep fails a stale trial and then queues its retry: a stop between the two would leave
    # a FAIL trial that nothing runs again. The signal lands in the main thread mid-sweep; the
    # sweep is only let go once the handler has run.
    assert threading.current_thread() is threading.main_thread()
    sweeping, signalled, let_go, finished = (threading.Event() for _ in range(4))

    def sweep(storage: object, say: object) -> bool:
        sweeping.set()
        let_go.wait(timeout=60)
        finished.set()
        return True

    def stop_mid_sweep() -> None:
        sweeping.wait(timeout=60)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        signalled.wait(timeout=60)
        let_go.set()

    monkeypatch.setattr(proxy, "sweep_stale", sweep)
    options = ProxyOptions(f"sqlite:///{tmp_path / 's.db'}", port=free_port(), heartbeat_s=1)
    threading.Thread(target=stop_mid_sweep, daemon=True).start()
    with pytest.raises(KeyboardInterrupt), stop_once(signal.SIGINT, on_stop=signalled.set):
        serve(options, lambda _: None)
    assert finished.is_set()


def test_an_error_in_a_sweep_ends_the_proxy_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sweep(storage: object, say: object) -> bool:
        raise RuntimeError("not a database outage")

    monkeypatch.setattr(proxy, "sweep_stale", sweep)
    options = ProxyOptions(f"sqlite:///{tmp_path / 's.db'}", port=free_port(), heartbeat_s=1)
    with pytest.raises(RuntimeError, match="not a database outage"):
        serve(options, lambda _: None)
    assert _listening_hosts(options.port) == set()  # the server stopped too


def test_the_token_is_required_once_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    options = ProxyOptions(f"sqlite:///{tmp_path / 't.db'}", port=free_port(), heartbeat_s=1)
    stop, said = threading.Event(), []
    thread = threading.Thread(target=serve, args=(options, said.append, stop), daemon=True)
    thread.start()
    wait_for(lambda: bool(said), timeout_s=30)
    assert "token required" in said[0]
    url = f"grpc://127.0.0.1:{options.port}"
    try:
        for given in (None, "wrong"):
            if given is None:
                monkeypatch.delenv(TOKEN_ENV)
            else:
                monkeypatch.setenv(TOKEN_ENV, given)
            with pytest.raises(UserError, match=f"refused the call; set {TOKEN_ENV}"):
                open_storage(url)
        monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
        optuna.create_study(study_name="ok", storage=open_storage(url))
        assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))] == ["ok"]
    finally:
        stop.set()
        thread.join(timeout=30)


def test_addresses_beyond_loopback_are_refused_unless_asked_with_a_token() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "::", "proxy.example.org"))
    refused = runner.invoke(app, ["proxy", "--host", "0.0.0.0", "--storage", "sqlite:///x.db"])
    assert refused.exit_code == 2 and "--allow-remote" in refused.output
    no_token = runner.invoke(
        app, ["proxy", "--host", "0.0.0.0", "--allow-remote", "--storage", "sqlite:///x.db"],
        env={TOKEN_ENV: ""},
    )  # fmt: skip
    assert no_token.exit_code == 2 and f"needs {TOKEN_ENV}" in no_token.output
    check_listen("0.0.0.0", allow_remote=True, token="a-token")  # asked for, with a token


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("grpc://127.0.0.1", "use grpc://HOST:PORT"),
        ("grpc://127.0.0.1:70000", "the port must be a number in [1, 65535]"),
        ("grpc://127.0.0.1:1", "no proxy answers there"),
    ],
)
def test_bad_proxy_urls_are_one_line(
    storage: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "CONNECT_TIMEOUT_S", 1)  # nothing answers on port 1: no 10 s wait
    result = runner.invoke(app, ["status", "tiny", "--storage", storage])
    assert result.exit_code == 2 and expected in result.output
    assert "Traceback" not in result.output


def test_the_proxy_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    for storage in (f"journal:///{tmp_path / 'j.log'}", "grpc://127.0.0.1:13000"):
        result = runner.invoke(app, ["proxy", "--storage", storage])
        assert result.exit_code == 2 and "the proxy serves a database" in result.output
    port = runner.invoke(app, ["proxy", "--port", "0", "--storage", "sqlite:///x.db"])
    assert port.exit_code == 2 and "--port must be in [1, 65535]" in port.output


@pytest.mark.slow
@pytest.mark.postgres
def test_create_worker_status_and_report_through_the_proxy(
    proxied: str, demo_root: Path, tmp_path: Path
) -> None:
    study = write_study(tmp_path, n_trials=2, epochs=2)
    common = ["--storage", proxied, "--artifacts", str(tmp_path / "a")]
    created = runner.invoke(app, ["create", str(study), "--storage", proxied])
    assert created.exit_code == 0, created.output
    worker = subprocess.run(
        cli("worker", "tiny", *common, "--data", str(demo_root), "--heartbeat", "1"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stdout + worker.stderr
    found = trials_of(proxied)
    assert sum(t.state in FINISHED for t in found) == 2
    assert not any(BEAT_KEY in t.system_attrs for t in found)
    status = runner.invoke(app, ["status", "tiny", *common])
    assert status.exit_code == 0 and "tiny: 2/2 finished" in status.output
    out = tmp_path / "report"
    report = runner.invoke(
        app, ["report", "tiny", "--out", str(out), *common, "--data", str(demo_root)]
    )
    assert report.exit_code == 0, report.output
    assert (out / "report.md").is_file()
