"""Bad days: killed workers, a cut database, concurrent runs, an unwritable artifact store,
the compose file's own commands; all with real processes and the real PostgreSQL."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from conftest import (
    FINISHED,
    PG_ADMIN,
    REPO,
    answers,
    cli,
    free_port,
    freeze_a_running_worker,
    running,
    start_cli,
    trials_of,
    wait_for,
    write_study,
)
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from carbrand_search.search import record
from carbrand_search.search.failures import STORAGE, kind_of
from carbrand_search.search.outage import Backoff
from carbrand_search.search.retry import settle_failure
from carbrand_search.search.storage import open_storage

pytestmark = pytest.mark.slow  # real processes, killed, cut off or refused


def start_run(
    study: Path, url: str, data: Path, artifacts: Path, workers: int
) -> subprocess.Popen:
    return start_cli(
        "run", str(study), "--storage", url, "--data", str(data), "--workers", str(workers),
        "--artifacts", str(artifacts), "--heartbeat", "1",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("backend", "workers", "n_trials"),
    [
        ("sqlite", 2, 4),
        pytest.param("postgres", 3, 5, marks=pytest.mark.postgres),
        # Through the gRPC proxy the heartbeat is relayed and the proxy finds the dead trial.
        pytest.param("proxy", 2, 4, marks=pytest.mark.postgres),
    ],
)
def test_sigkilled_worker_trial_fails_and_is_retried(
    demo_root: Path, tmp_path: Path, request: pytest.FixtureRequest, backend: str,
    workers: int, n_trials: int,
) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 'study.db'}"
    if backend == "postgres":
        url, _ = request.getfixturevalue("pg")
    if backend == "proxy":
        url = request.getfixturevalue("proxied")
    study = write_study(tmp_path, n_trials=n_trials, epochs=4)
    proc = start_run(study, url, demo_root, tmp_path / "a", workers)
    # Stopped in epoch 2 or later, so the trial is still running when it dies and has saved
    # where it stood after epoch 1 at least.
    pid, victim = freeze_a_running_worker(url, min_epoch=2)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: any(t.system_attrs.get("failed_trial") == victim.number for t in trials_of(url))
    )
    print(f"killed trial re-queued {time.monotonic() - killed:.1f}s after SIGKILL")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    found = trials_of(url)
    assert sum(t.state in FINISHED for t in found) == n_trials
    assert found[victim.number].state == TrialState.FAIL
    retries = [t for t in found if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].state in FINISHED
    # It went on from the last epoch the victim had saved when it was stopped.
    saved = record.read(victim).resume
    assert saved is not None and saved.epoch >= 1
    expected = record.ResumedFrom(victim.number, saved.epoch, saved.batch)
    assert record.read(retries[0]).resumed_from == expected
    assert all(t.state != TrialState.RUNNING for t in found)
    store = open_storage(url)
    for t in found:
        if t.state == TrialState.COMPLETE:
            names = {m.filename for m in get_all_artifact_meta(t, storage=store)}
            assert f"trial-{t.number}.safetensors" in names
            checkpoint = record.read(t).checkpoint
            assert checkpoint is not None and (tmp_path / "a" / checkpoint).is_file()


def backends(database: str, terminate: bool) -> int:
    """Connections to `database` other than this one; with `terminate`, cut them too."""
    what = "count(pg_terminate_backend(pid))" if terminate else "count(*)"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {what} FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_database_connections_cut_mid_study(demo_root: Path, tmp_path: Path, pg) -> None:
    url, name = pg
    proc = start_run(
        write_study(tmp_path, n_trials=4, epochs=4), url, demo_root, tmp_path / "a", 2
    )
    # With one worker stopped mid-trial the study cannot finish, so `run` and the other worker
    # keep using the database however fast they train.
    pid, _ = freeze_a_running_worker(url)
    started = time.monotonic()
    for _ in range(2):  # cut every connection, twice
        # After a cut, clients back off before reconnecting: wait until one holds one again and
        # it is cut (a connection counted a moment ago may be gone by the time it is cut).
        wait_for(lambda: backends(name, terminate=True) >= 1)
    os.kill(pid, signal.SIGCONT)  # its pooled connection was cut too
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    found = trials_of(url)
    assert sum(t.state in FINISHED for t in found) == 4  # nothing lost, nothing extra
    assert all(t.state != TrialState.RUNNING for t in found)
    print(f"recovered and finished {time.monotonic() - started:.1f}s after the first cut")


PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None)


@dataclass(frozen=True)
class OwnPostgres:
    """A PostgreSQL server of one test's own: its URL, and `pg_ctl` to stop and start it."""

    url: str
    ctl: list[str]

    def stop(self) -> None:
        subprocess.run(
            [*self.ctl, "stop", "-m", "fast"], check=True, capture_output=True, timeout=60
        )

    def start(self) -> None:
        subprocess.run([*self.ctl, "start"], check=True, capture_output=True, timeout=60)

    def outage(self) -> None:
        """The server stops, stays down 3 s, and starts again."""
        self.stop()
        time.sleep(3)
        self.start()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test's own (initdb in a temporary folder, a free loopback
    port, run as the postgres user), so that stopping it disturbs no other test."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="cbs-pg-"))
    shutil.chown(folder, "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w"]
    ctl += ["-o", f"-p {port} -k {folder} -h 127.0.0.1"]
    server = OwnPostgres(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", ctl)
    server.start()
    try:
        yield server
    finally:
        subprocess.run([*ctl, "stop", "-m", "immediate"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
def test_a_failed_trials_record_and_retry_wait_for_the_database(own_postgres: OwnPostgres) -> None:
    """A trial that failed because the database went away is recorded and its retry queued once
    the database is back: had either been skipped, Optuna would tell it FAIL with its
    parameters never run again."""
    study = optuna.create_study(study_name="s", storage=open_storage(own_postgres.url))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    own_postgres.stop()
    with pytest.raises(Exception) as cut:
        trial.set_user_attr("epoch", 3)  # what a training trial writes, with the server gone
    assert kind_of(cut.value) == STORAGE
    said: list[str] = []

    def back(line: str) -> None:  # Backoff says so at its first failed try: restart then
        said.append(line)
        own_postgres.start()

    assert settle_failure(trial, cut.value, Backoff(say=back))
    assert len(said) == 1 and "database unreachable" in said[0]
    found = trials_of(own_postgres.url, "s")
    assert record.read(found[trial.number]).failure_kind == STORAGE
    retries = [t for t in found if record.read(t).retry_of == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["fixed_params"] == trial.params  # asked with these


@pytest.mark.postgres
@pytest.mark.parametrize("through", ["direct", "proxy"])
def test_a_database_restart_mid_run_needs_no_second_command(
    demo_root: Path, tmp_path: Path, own_postgres: OwnPostgres, through: str
) -> None:
    """The server goes away for 3 s while two workers train: `run` and its workers wait for it
    and the study finishes its budget, nothing lost, nothing run twice, exit 0. Through the gRPC
    proxy too: it answers UNAVAILABLE meanwhile, which the workers wait out the same way."""
    url = own_postgres.url
    proxy = None
    if through == "proxy":
        port = free_port()
        proxy = start_cli("proxy", "--storage", url, "--port", str(port), "--heartbeat", "1")
        url = f"grpc://127.0.0.1:{port}"
        wait_for(lambda: answers(url), timeout_s=60)
    study = write_study(tmp_path, n_trials=4, epochs=4)
    proc = start_run(study, url, demo_root, tmp_path / "a", 2)
    wait_for(lambda: bool(running(url)))
    own_postgres.outage()
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert "database unreachable" in output  # `run` saw it, and waited
    found = trials_of(url)
    assert sum(t.state in FINISHED for t in found) == 4
    assert all(t.state in (*FINISHED, TrialState.FAIL) for t in found)
    for failed in (t for t in found if t.state == TrialState.FAIL):
        retries = [
            t for t in found
            if record.read(t).retry_of == failed.number
            or t.system_attrs.get("failed_trial") == failed.number
        ]  # fmt: skip
        assert len(retries) == 1 and retries[0].params == failed.params
    if proxy is not None:
        proxy.terminate()
        proxy.communicate(timeout=30)


def test_two_runs_at_once_respect_the_budget(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = write_study(tmp_path, n_trials=5, epochs=3)
    subprocess.run(cli("create", str(study), "--storage", url), check=True, capture_output=True)
    first = start_run(study, url, demo_root, tmp_path / "a", 1)
    second = start_run(study, url, demo_root, tmp_path / "a", 1)
    for proc in (first, second):
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output
    found = trials_of(url)
    assert sum(t.state in FINISHED for t in found) == 5
    # How the five split between the two runs depends on their speed; the budget does not.
    workers = {record.read(t).worker for t in found if t.state in FINISHED}
    assert None not in workers and 1 <= len(workers) <= 2


def test_unwritable_artifact_store_fails_trials_clearly(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    artifacts = tmp_path / "a"
    study = write_study(tmp_path, n_trials=4, epochs=3)
    proc = start_run(study, url, demo_root, artifacts, 1)
    pid, _ = freeze_a_running_worker(url)  # so trials are left to fail, however fast they are
    # Root ignores permission bits, so "unwritable" is a plain file where the folder was.
    artifacts.rename(tmp_path / "a-kept")
    artifacts.write_text("not a folder")
    os.kill(pid, signal.SIGCONT)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 3, output  # stopped short of its budget: not the user's input
    assert "stopped short of its budget" in output
    assert "3 trials in a row failed" in output and "artifact store" in output
    found = trials_of(url)
    failed = [t for t in found if t.state == TrialState.FAIL]
    assert len(failed) >= 3
    assert all("cannot write" in (record.read(t).fail_reason or "") for t in failed)
    assert all(t.state != TrialState.RUNNING for t in found)
    artifacts.unlink()
    (tmp_path / "a-kept").rename(artifacts)
    resumed = subprocess.run(
        cli("run", str(study), "--storage", url, "--data", str(demo_root), "--artifacts", str(artifacts)),
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sum(t.state in FINISHED for t in trials_of(url)) == 4


def test_unwritable_artifact_store_is_refused_before_any_trial(
    demo_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = subprocess.run(
        cli("run", str(write_study(tmp_path)), "--storage", url, "--data", str(demo_root),
            "--artifacts", str(tmp_path / "file")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "not a writable folder" in result.stderr
    assert not (tmp_path / "study.db").exists()


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _expand(words: list[str], values: dict[str, str]) -> list[str]:
    def one(word: str) -> str:
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), word)

    return [one(w) for w in words]


@pytest.mark.postgres
def test_compose_commands_run_a_study_against_postgres(
    demo_root: Path, tmp_path: Path, pg
) -> None:
    url, _ = pg
    studies = tmp_path / "studies"
    studies.mkdir()
    write_study(studies, n_trials=3, epochs=2)
    services = _compose()["services"]
    env = {**os.environ, "CARBRAND_STORAGE": url, "CARBRAND_DATA": str(demo_root),
           "CARBRAND_ARTIFACTS": str(tmp_path / "artifacts"), "CARBRAND_STUDIES": str(studies)}  # fmt: skip
    values = {"STUDY": "tiny", "HEARTBEAT": "1"}
    for service in ("create", "worker"):
        command = _expand(services[service]["command"], values)
        assert command[0] == "carbrand-search"
        done = subprocess.run(
            cli(*command[1:]), env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert sum(t.state in FINISHED for t in trials_of(url)) == 3
    gpus = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["capabilities"] == ["gpu"] and gpus["count"] == "all"  # N workers on N GPUs
    assert services["worker"]["command"][1:4] == ["run", "${STUDY:-cnn-hpo}", "--workers"]
    text = (REPO / "docker-compose.yml").read_text()
    # Credentials only ever come from the environment (.env), never written in the file.
    assert re.search(r"://carbrand:(?!\$\{?POSTGRES_PASSWORD)", text) is None
    assert "change-me" not in text


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed (.ci/run installs it)",
)
def test_compose_file_is_valid(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    example = (REPO / ".env.example").read_text().replace("./data/car-brands", str(tmp_path))
    env_file.write_text(example.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pw-of-mine\n"))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) >= {"postgres", "dashboard", "worker", "create"}
    assert config["services"]["postgres"]["healthcheck"]
    assert "pgdata" in config["volumes"] and "artifacts" in config["volumes"]
