"""The search service end to end: real worker processes, real SQLite and PostgreSQL."""

import os
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
import torch
from conftest import REPO, write_study
from optuna.artifacts import download_artifact
from optuna.trial import TrialState
from safetensors.torch import load_file
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.config import SamplerConfig
from carbrand_search.core.errors import UserError
from carbrand_search.search import space
from carbrand_search.search.launcher import make_sampler, plan_devices, stored_spec
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.training.run import build_model

runner = CliRunner()
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def states(url: str, name: str = "tiny") -> list[TrialState]:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return [t.state for t in study.get_trials(deepcopy=False)]


def finished(url: str, name: str = "tiny") -> int:
    return sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states(url, name))


def run_cli(study: Path, url: str, data: Path, tmp_path: Path, *extra: str):
    args = ["run", str(study), "--storage", url, "--data", str(data)]
    args += ["--artifacts", str(tmp_path / "artifacts"), "--heartbeat", "1", *extra]
    return runner.invoke(app, args)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, dropped afterwards."""
    name = f"cbs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_on_sqlite_reach_the_budget_exactly(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=5)
    result = run_cli(study_file, url, demo_root, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "tiny: 5/5 finished" in result.output
    assert finished(url) == 5
    assert TrialState.RUNNING not in states(url)
    before = states(url)
    again = run_cli(study_file, url, demo_root, tmp_path, "--workers", "2")
    assert again.exit_code == 0 and "already finished (5/5 trials)" in again.output
    assert states(url) == before  # the no-op re-run added nothing
    more = run_cli(study_file, url, demo_root, tmp_path, "--workers", "2", "--n-trials", "7")
    assert more.exit_code == 0, more.output
    assert finished(url) == 7


def test_two_workers_on_postgres(demo_root: Path, tmp_path: Path, pg_url: str) -> None:
    study_file = write_study(tmp_path, n_trials=4)
    result = run_cli(study_file, pg_url, demo_root, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert finished(pg_url) == 4
    assert TrialState.RUNNING not in states(pg_url)
    study = optuna.load_study(study_name="tiny", storage=open_storage(pg_url))
    workers = {t.user_attrs["worker"] for t in study.get_trials() if "worker" in t.user_attrs}
    assert len(workers) == 2  # both processes ran trials


def test_journal_storage(demo_root: Path, tmp_path: Path) -> None:
    url = f"journal://{tmp_path / 'journal.log'}"
    result = run_cli(write_study(tmp_path, n_trials=3), url, demo_root, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert finished(url) == 3


def test_best_trial_rebuilds_from_stored_params_and_checkpoint(
    demo_root: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_cli(write_study(tmp_path, n_trials=2), url, demo_root, tmp_path).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    best = study.best_trial
    spec = stored_spec(study)
    config = spec.resolve(space.decode(spec, best.params))
    model = build_model(config, len(best.user_attrs["classes"]))
    weights = tmp_path / "best.safetensors"
    download_artifact(
        artifact_store=artifact_store(str(tmp_path / "artifacts")),
        artifact_id=best.user_attrs["checkpoint"],
        file_path=str(weights),
    )
    model.load_state_dict(load_file(str(weights)))
    assert best.user_attrs["val"]["val_macro_f1"] == pytest.approx(best.value)
    assert len(best.intermediate_values) == 2


def test_collapse_pruner_cuts_diverging_study_early(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    huge_lr = "low = 5.0\nhigh = 10.0\ndefault = 5.0"  # 10 is the most train.lr accepts
    study_file = write_study(tmp_path, n_trials=3, epochs=8, lr=huge_lr, collapse=True)
    assert run_cli(study_file, url, demo_root, tmp_path).exit_code == 0
    status = runner.invoke(app, ["status", "tiny", "--storage", url])
    assert status.exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED
        reason = trial.user_attrs["prune_reason"]
        assert reason["rule"] in ("one-class", "chance-loss", "diverged")
        assert reason["epoch"] < 8
        assert len(trial.user_attrs["epochs"]) == reason["epoch"]
    assert "rule=" in status.output and "3 pruned" in status.output


def test_bad_input_changes_nothing_in_storage(demo_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    study_file = write_study(tmp_path)
    bad_data = run_cli(study_file, url, tmp_path / "no-data", tmp_path)
    assert bad_data.exit_code == 2 and "does not exist" in bad_data.output
    assert not db.exists()
    unknown = runner.invoke(app, ["run", "nope", "--storage", url])
    assert (
        unknown.exit_code == 2
        and "available: cars-scratch, cnn-bn-hpo, cnn-demo, cnn-hpo, effnet-b0" in unknown.output
    )
    scheme = run_cli(study_file, "mongodb://x", demo_root, tmp_path)
    assert scheme.exit_code == 2 and "unsupported URL" in scheme.output
    unreachable = run_cli(
        study_file, "postgresql+psycopg://u:secret@127.0.0.1:1/x", demo_root, tmp_path
    )
    assert unreachable.exit_code == 2 and "cannot open" in unreachable.output
    assert "secret" not in unreachable.output and "u:***@" in unreachable.output
    assert not db.exists()
    no_weights = tmp_path / "effnet.toml"
    no_weights.write_text(
        (REPO / "studies" / "effnet-b0.toml")
        .read_text()
        .replace('weights = ""', f'weights = "{tmp_path}/none.pt"')
    )
    offline = run_cli(no_weights, url, demo_root, tmp_path)
    assert offline.exit_code == 2 and "model.weights: no such file" in offline.output
    assert not db.exists()


def test_other_study_file_under_same_name_is_refused(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_cli(write_study(tmp_path, n_trials=1), url, demo_root, tmp_path).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    changed = run_cli(write_study(other, n_trials=1, epochs=3), url, demo_root, tmp_path)
    assert changed.exit_code == 2 and "different study file" in changed.output
    assert len(states(url)) == 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "carbrand_search", *args]


def _wait_for(predicate, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    except KeyError:
        return []
    return [
        t
        for t in study.get_trials(states=(TrialState.RUNNING,))
        if t.user_attrs.get("epoch", 0) >= 2
    ]


def test_sigkilled_worker_trial_fails_and_is_retried(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=4, epochs=12)
    args = ["run", str(study_file), "--storage", url, "--data", str(demo_root), "--workers", "2"]
    proc = subprocess.Popen(
        _cli(*args, "--artifacts", str(tmp_path / "a"), "--heartbeat", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(lambda: bool(_running(url)))
    victim = _running(url)[0]
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    trials = study.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert TrialState.RUNNING not in [t.state for t in trials]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_run_cleanly_and_run_resumes(
    demo_root: Path, tmp_path: Path, stop: int
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=3, epochs=12)
    args = ["run", str(study_file), "--storage", url, "--data", str(demo_root), "--workers", "2"]
    args += ["--artifacts", str(tmp_path / "a"), "--heartbeat", "1"]
    proc = subprocess.Popen(
        _cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for(lambda: bool(_running(url)))
    sent = time.monotonic()
    proc.send_signal(stop)
    output, _ = proc.communicate(timeout=60)
    print(f"run exited {time.monotonic() - sent:.1f}s after signal {stop}")
    assert proc.returncode == 130, output
    assert "interrupted" in output
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    pids = {
        int(t.user_attrs["worker"].rsplit(":", 1)[1])
        for t in study.trials
        if "worker" in t.user_attrs
    }
    assert pids and not any(_alive(pid) for pid in pids)  # no orphaned workers
    assert TrialState.RUNNING not in states(url)
    assert TrialState.FAIL in states(url)
    resumed = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert finished(url) == 3


def test_worker_joins_a_study_created_by_run(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=6, epochs=6)
    common = ["--storage", url, "--data", str(demo_root), "--artifacts", str(tmp_path / "a")]
    run_proc = subprocess.Popen(
        _cli("run", str(study_file), "--workers", "1", "--heartbeat", "1", *common),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(lambda: bool(_running(url)))
    joined = subprocess.run(
        _cli("worker", "tiny", "--threads", "1", "--heartbeat", "1", *common),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr
    output, _ = run_proc.communicate(timeout=300)
    assert run_proc.returncode == 0, output
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    workers = {
        t.user_attrs.get("worker") for t in study.get_trials() if t.state == TrialState.COMPLETE
    }
    assert len(workers) == 2
    assert finished(url) == 6


def test_studies_lists_what_a_storage_holds(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_cli(write_study(tmp_path, n_trials=1), url, demo_root, tmp_path).exit_code == 0
    listed = runner.invoke(app, ["studies", "--storage", url])
    assert listed.exit_code == 0 and "tiny: 1 trials" in listed.output


def test_cpu_cores_are_split_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert plan_devices("cpu", 2, 1) == [("cpu", 4), ("cpu", 4)]
    assert plan_devices("cpu", 3, 1) == [("cpu", 2)] * 3
    assert plan_devices("cpu", 16, 1) == [("cpu", 1)] * 16
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            plan_devices("cuda", 1, 1)


def test_workers_per_gpu_packs_trials_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planning only (no CUDA call is made): two visible GPUs, 16 cores.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert plan_devices("cuda", 4, 2) == [
        ("cuda:0", 4),
        ("cuda:1", 4),
        ("cuda:0", 4),
        ("cuda:1", 4),
    ]
    assert plan_devices("cuda", 2, 1) == [("cuda:0", 8), ("cuda:1", 8)]
    with pytest.raises(UserError, match="--workers 5 is more than 2 GPU"):
        plan_devices("cuda", 5, 2)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
     ("gp", optuna.samplers.GPSampler)],
)  # fmt: skip
def test_samplers_from_study_file(name: str, kind: type) -> None:
    sampler = make_sampler(SamplerConfig(name=name, seed=3), offset=1)  # type: ignore[arg-type]
    assert isinstance(sampler, kind)


def test_worker_for_missing_study_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = runner.invoke(app, ["worker", "ghost", "--storage", url])
    assert result.exit_code == 2 and "no study 'ghost'" in result.output


def _ask_once(url: str, barrier, out) -> None:
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    barrier.wait()
    out.put(study.ask().number)


def test_a_queued_trial_goes_to_exactly_one_worker_on_sqlite(tmp_path: Path) -> None:
    """SQLite ignores SELECT … FOR UPDATE: without IMMEDIATE transactions, workers asking at once
    could all pop the same WAITING trial and run it twice."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    for _ in range(3):
        study.enqueue_trial({"x": 1.0})
        barrier, out = context.Barrier(4), context.Queue()
        procs = [context.Process(target=_ask_once, args=(url, barrier, out)) for _ in range(4)]
        for p in procs:
            p.start()
        numbers = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert len(set(numbers)) == 4, numbers  # four trials, none handed out twice
    fixed = [t for t in study.get_trials() if t.system_attrs.get("fixed_params")]
    assert len(fixed) == 3
