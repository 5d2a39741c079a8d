"""Bad days: killed workers, a cut database, concurrent runs, an unwritable artifact store,
the compose file's own commands; all with real processes and the real PostgreSQL."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from conftest import REPO, write_study
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from carbrand_search.search.storage import open_storage

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def pg() -> Iterator[tuple[str, str]]:
    """(storage URL, database name) of a fresh database, dropped afterwards."""
    name = f"cbs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "carbrand_search", *args]


def trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def wait_for(predicate, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def trials_so_far(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or none while `run` has not created it yet."""
    try:
        return trials(url)
    except KeyError:
        return []


def running_past_epoch(url: str, epoch: int = 2) -> list[optuna.trial.FrozenTrial]:
    found = trials_so_far(url)
    return [
        t for t in found if t.state == TrialState.RUNNING and t.user_attrs.get("epoch", 0) >= epoch
    ]


def start_run(
    study: Path, url: str, data: Path, artifacts: Path, workers: int
) -> subprocess.Popen:
    args = cli("run", str(study), "--storage", url, "--data", str(data), "--workers", str(workers),
               "--artifacts", str(artifacts), "--heartbeat", "1")  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_one_of_three_workers_on_postgres(demo_root: Path, tmp_path: Path, pg) -> None:
    url, _ = pg
    proc = start_run(
        write_study(tmp_path, n_trials=5, epochs=10), url, demo_root, tmp_path / "a", 3
    )
    wait_for(lambda: bool(running_past_epoch(url)))
    victim = running_past_epoch(url)[0]
    killed = time.monotonic()
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    wait_for(lambda: any(t.system_attrs.get("failed_trial") == victim.number for t in trials(url)))
    print(f"killed trial re-queued {time.monotonic() - killed:.1f}s after SIGKILL")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    found = trials(url)
    assert sum(t.state in FINISHED for t in found) == 5
    assert found[victim.number].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in found].count(victim.number) == 1
    assert all(t.state != TrialState.RUNNING for t in found)
    store = open_storage(url)
    for t in found:
        if t.state == TrialState.COMPLETE:
            names = {m.filename for m in get_all_artifact_meta(t, storage=store)}
            assert f"trial-{t.number}.safetensors" in names
            assert (tmp_path / "a" / t.user_attrs["checkpoint"]).is_file()


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


def test_database_connections_cut_mid_study(demo_root: Path, tmp_path: Path, pg) -> None:
    url, name = pg
    proc = start_run(
        write_study(tmp_path, n_trials=4, epochs=8), url, demo_root, tmp_path / "a", 2
    )
    wait_for(lambda: bool(running_past_epoch(url)))
    started = time.monotonic()
    for _ in range(2):  # cut every connection the workers hold, twice
        # After a cut, workers back off before reconnecting: wait until they hold one again.
        wait_for(lambda: backends(name, terminate=False) >= 1)
        assert backends(name, terminate=True) >= 1
        time.sleep(2)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    found = trials(url)
    assert sum(t.state in FINISHED for t in found) == 4  # nothing lost, nothing extra
    assert all(t.state != TrialState.RUNNING for t in found)
    print(f"recovered and finished {time.monotonic() - started:.1f}s after the first cut")


def test_two_runs_at_once_respect_the_budget(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = write_study(tmp_path, n_trials=5, epochs=3)
    subprocess.run(cli("create", str(study), "--storage", url), check=True, capture_output=True)
    first = start_run(study, url, demo_root, tmp_path / "a", 1)
    second = start_run(study, url, demo_root, tmp_path / "a", 1)
    for proc in (first, second):
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output
    found = trials(url)
    assert sum(t.state in FINISHED for t in found) == 5
    workers = {t.user_attrs.get("worker") for t in found if t.state in FINISHED}
    assert len(workers) == 2


def test_unwritable_artifact_store_fails_trials_clearly(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    artifacts = tmp_path / "a"
    study = write_study(tmp_path, n_trials=4, epochs=10)  # seconds per trial: time to act
    proc = start_run(study, url, demo_root, artifacts, 1)
    wait_for(lambda: any(t.state == TrialState.COMPLETE for t in trials_so_far(url)))
    # Root ignores permission bits, so "unwritable" is a plain file where the folder was.
    artifacts.rename(tmp_path / "a-kept")
    artifacts.write_text("not a folder")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode != 0
    assert "3 trials in a row failed" in output and "artifact store" in output
    found = trials(url)
    failed = [t for t in found if t.state == TrialState.FAIL]
    assert len(failed) >= 3
    assert all("cannot write" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.state != TrialState.RUNNING for t in found)
    artifacts.unlink()
    (tmp_path / "a-kept").rename(artifacts)
    resumed = subprocess.run(
        cli("run", str(study), "--storage", url, "--data", str(demo_root), "--artifacts", str(artifacts)),
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sum(t.state in FINISHED for t in trials(url)) == 4


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
    assert sum(t.state in FINISHED for t in trials(url)) == 3
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] == ["gpu"]
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
