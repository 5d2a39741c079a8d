"""The search service end to end: real worker processes, real SQLite and PostgreSQL."""

import multiprocessing
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import (
    REPO,
    Done,
    alive,
    cli,
    finished,
    freeze_a_running_worker,
    running,
    signal_pending,
    start_cli,
    trials_of,
    wait_for,
    write_study,
)
from optuna.artifacts import download_artifact
from optuna.trial import TrialState
from safetensors.torch import load_file
from test_pruners import epoch_metrics
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.config import SamplerConfig
from carbrand_search.core.errors import UserError
from carbrand_search.search import record, space
from carbrand_search.search.launcher import plan_devices
from carbrand_search.search.options import LaunchOptions, RunOptions
from carbrand_search.search.runner import run_study
from carbrand_search.search.samplers import make_sampler
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.search.study import ensure_study, stored_spec
from carbrand_search.training.device import resolve_device
from carbrand_search.training.parts import build_model

runner = CliRunner()


def states(url: str, name: str = "tiny") -> list[TrialState]:
    return [t.state for t in trials_of(url, name)]


def run_cli(study: Path, url: str, data: Path, tmp_path: Path, *extra: str):
    args = ["run", str(study), "--storage", url, "--data", str(data)]
    args += ["--artifacts", str(tmp_path / "artifacts"), "--heartbeat", "1", *extra]
    return runner.invoke(app, args)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgres(demo_root: Path, tmp_path: Path, pg) -> None:
    url, _ = pg
    study_file = write_study(tmp_path, n_trials=4)
    result = run_cli(study_file, url, demo_root, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "with 2 worker(s)" in result.output
    assert finished(url) == 4
    assert TrialState.RUNNING not in states(url)
    # Which of the two ran how many trials depends on their speed; that each trial names one
    # of at most two workers does not.
    workers = {record.read(t).worker for t in trials_of(url)}
    assert None not in workers and 1 <= len(workers) <= 2


@pytest.mark.slow
def test_journal_storage(demo_root: Path, tmp_path: Path) -> None:
    url = f"journal://{tmp_path / 'journal.log'}"
    result = run_cli(write_study(tmp_path, n_trials=3), url, demo_root, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert finished(url) == 3


def test_best_trial_rebuilds_from_stored_params_and_checkpoint(done: Done, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="tiny", storage=open_storage(done.url))
    best = study.best_trial
    spec = stored_spec(study)
    config = spec.resolve(space.decode(spec, best.params))
    stored = record.read(best)
    assert stored.checkpoint is not None and stored.val is not None
    model = build_model(config, len(stored.classes))
    weights = tmp_path / "best.safetensors"
    download_artifact(
        artifact_store=artifact_store(str(done.artifacts)),
        artifact_id=stored.checkpoint,
        file_path=str(weights),
    )
    model.load_state_dict(load_file(str(weights)))
    assert stored.val is not None and stored.val.val_macro_f1 == pytest.approx(best.value)
    assert len(best.intermediate_values) == spec.base.train.epochs == 6


def test_bad_input_changes_nothing_in_storage(demo_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    study_file = write_study(tmp_path)
    bad_data = run_cli(study_file, url, tmp_path / "no-data", tmp_path)
    assert bad_data.exit_code == 2 and "does not exist" in bad_data.output
    assert not db.exists()
    unknown = runner.invoke(app, ["run", "nope", "--storage", url])
    assert unknown.exit_code == 2 and "available: cars-scratch, cars-student" in unknown.output
    scheme = run_cli(study_file, "mongodb://x", demo_root, tmp_path)
    assert scheme.exit_code == 2 and "unsupported URL" in scheme.output
    # Its hint keeps the password out of the URL, as the docs ask.
    assert "PASSWORD@" not in scheme.output and "PGPASSWORD" in scheme.output
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
    # `run` spawns its workers before these checks; a refused run leaves none behind.
    assert multiprocessing.active_children() == []


def test_other_study_file_under_same_name_is_refused(done_copy: Done, tmp_path: Path) -> None:
    before = states(done_copy.url)
    other = tmp_path / "other"
    other.mkdir()
    changed = run_cli(write_study(other, epochs=3), done_copy.url, done_copy.data, done_copy.root)
    assert changed.exit_code == 2 and "different study file" in changed.output
    assert states(done_copy.url) == before


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("proxy", marks=pytest.mark.postgres)])
def test_signals_stop_run_cleanly_and_run_resumes(
    demo_root: Path, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """Ctrl-C, then SIGTERM (`kill`, `docker stop`, a pod's preemption) on the run that resumed
    it: each stops its workers mid-trial, fails and re-queues the trial, orphans nothing; a third
    run finishes. Through the gRPC proxy too, as pods of the Kubernetes worker Job use it."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    if backend == "proxy":
        url = request.getfixturevalue("proxied")
    study_file = write_study(tmp_path, n_trials=3, epochs=4)
    args = ["run", str(study_file), "--storage", url, "--data", str(demo_root), "--workers", "2"]
    args += ["--artifacts", str(tmp_path / "a"), "--heartbeat", "1"]
    caught = []
    for stop in (signal.SIGINT, signal.SIGTERM):
        proc = start_cli(*args)
        pid, trial = freeze_a_running_worker(url)  # mid-trial however fast the machine is
        caught.append(trial)
        proc.send_signal(stop)
        # `run` stops its workers with SIGTERM: let the frozen one take it mid-trial.
        wait_for(lambda pid=pid: signal_pending(pid, signal.SIGTERM))
        os.kill(pid, signal.SIGCONT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, (stop, output)
        assert "interrupted" in output
        found = trials_of(url)
        stopped = next(t for t in found if t.number == trial.number)
        assert stopped.state == TrialState.FAIL, stop
        reason = record.read(stopped)
        assert reason.failure_kind == "killed" and "SIGTERM" in (reason.fail_reason or "")
        pids = {record.read(t).pid for t in found} - {None}
        assert pids and not any(alive(p) for p in pids if p is not None)  # no orphans
        assert TrialState.RUNNING not in states(url)
    resumed = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert finished(url) == 3
    # Every stopped trial (the frozen ones, and any the other worker was running) runs again
    # once with its parameters, from its last saved epoch if any. A surplus trial (both workers
    # asked for the last place at once: seen with a training on the same cores) ends at once and
    # is not retried.
    found = trials_of(url)
    failed = [t for t in found if t.state == TrialState.FAIL and not record.read(t).surplus]
    assert {t.number for t in caught} <= {t.number for t in failed}
    for trial in failed:
        retries = [t for t in found if record.read(t).retry_of == trial.number]
        assert len(retries) == 1 and retries[0].params == trial.params, trial.number


@pytest.mark.slow
def test_two_ctrl_c_leave_every_interrupted_trial_queued(demo_root: Path, tmp_path: Path) -> None:
    """Ctrl-C twice, 0.2 s apart, to the whole process group as a terminal sends it: one line,
    no traceback, and every interrupted trial recorded as stopped with its retry queued. The
    second signal used to land while a worker was recording its failed trial, leaving it with
    no failure kind and no retry (and each worker printed Optuna's KeyboardInterrupt trace)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=4, epochs=500)
    proc = start_cli(
        "run", str(study_file), "--storage", url, "--data", str(demo_root), "--workers", "2",
        "--artifacts", str(tmp_path / "a"), own_group=True,
    )  # fmt: skip
    wait_for(lambda: len(running(url)) == 2)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.count("interrupted") == 1
    found = trials_of(url)
    failed = [t for t in found if t.state == TrialState.FAIL]
    assert len(failed) == 2 and TrialState.RUNNING not in states(url)
    for trial in failed:
        assert record.read(trial).failure_kind == "killed", trial.number
        retries = [t for t in found if record.read(t).retry_of == trial.number]
        assert [t.state for t in retries] == [TrialState.WAITING], trial.number


@pytest.mark.slow
def test_a_worker_whose_run_was_killed_stops_after_its_trial(
    demo_root: Path, tmp_path: Path
) -> None:
    """SIGKILL on `run` leaves its worker with nothing supervising it: the worker notices (its
    parent changed), finishes the trial it is on and starts no other."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=4, epochs=6)
    proc = start_cli(
        "run", str(study_file), "--storage", url, "--data", str(demo_root),
        "--artifacts", str(tmp_path / "a"),
    )  # fmt: skip
    wait_for(lambda: len(running(url)) == 1)
    worker = record.read(running(url)[0]).pid
    assert worker is not None
    proc.kill()
    proc.wait(timeout=30)  # not communicate(): the orphaned worker still holds the pipe
    wait_for(lambda: not alive(worker), timeout_s=300)
    assert proc.stdout is not None
    proc.stdout.close()
    found = trials_of(url)
    assert [t.state for t in found if record.read(t).pid == worker] == [TrialState.COMPLETE]
    assert TrialState.RUNNING not in states(url)
    assert finished(url) == 1  # and nothing else ran: no one is left to run it


@pytest.mark.slow
def test_worker_joins_a_study_created_by_run(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=3, epochs=3)
    common = ["--storage", url, "--data", str(demo_root), "--artifacts", str(tmp_path / "a")]
    run_proc = start_cli("run", str(study_file), "--workers", "1", "--heartbeat", "1", *common)
    # run's only worker, stopped mid-trial, can finish nothing: what finishes is the joiner's.
    frozen, caught = freeze_a_running_worker(url)
    joined = subprocess.run(
        cli("worker", "tiny", "--threads", "1", "--heartbeat", "1", *common),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr
    # Not a terminal: a line per trial it saw finish (the worker printed nothing before).
    assert re.search(r"^trial \d+ COMPLETE val_macro_f1 ", joined.stdout, re.MULTILINE)
    os.kill(frozen, signal.SIGKILL)
    output, _ = run_proc.communicate(timeout=300)
    assert run_proc.returncode == 0, output  # the budget was met, by the joined worker
    found = trials_of(url)
    assert finished(url) == 3
    joiners = {record.read(t).pid for t in found if t.state == TrialState.COMPLETE} - {frozen}
    assert len(joiners) == 1
    # The frozen trial went silent: the joined worker failed it and ran its retry.
    assert next(t for t in found if t.number == caught.number).state == TrialState.FAIL
    retries = [t for t in found if t.system_attrs.get("failed_trial") == caught.number]
    assert len(retries) == 1 and retries[0].params == caught.params


def test_studies_lists_what_a_storage_holds(done: Done) -> None:
    listed = runner.invoke(app, ["studies", "--storage", done.url])
    assert listed.exit_code == 0 and "tiny: 2 trials" in listed.output


def test_cpu_cores_are_split_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert plan_devices("cpu", 2, 1) == [("cpu", 4), ("cpu", 4)]
    assert plan_devices("cpu", 3, 1) == [("cpu", 2)] * 3
    assert plan_devices("cpu", 16, 1) == [("cpu", 1)] * 16
    # `run --threads 1`: two studies side by side on 2 cores, one thread each.
    assert plan_devices("cpu", 2, None, threads=1) == [("cpu", 1)] * 2
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


@pytest.mark.parametrize("gpus", [1, 2, 4])
@pytest.mark.parametrize("workers", range(1, 9))
def test_workers_spread_evenly_over_any_number_of_gpus(
    monkeypatch: pytest.MonkeyPatch, gpus: int, workers: int
) -> None:
    """`run --workers N` works on one GPU or many, no flag needed (it was refused with fewer
    GPUs than workers); no GPU holds more than one worker above another."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    plan = plan_devices("auto", workers)
    per_gpu = [sum(d == f"cuda:{g}" for d, _ in plan) for g in range(gpus)]
    assert sum(per_gpu) == workers and max(per_gpu) - min(per_gpu) <= 1
    assert all(threads >= 1 for _, threads in plan)


@pytest.mark.parametrize("name", ["tpe", "random", "gp"])
def test_parallel_workers_do_not_propose_alike(tmp_path: Path, name: str) -> None:
    """Four workers with the study file's sampler (as `run_worker` makes it) ask for two trials
    each while none has finished: eight distinct parameter sets. Seeded per worker alike, each
    round would propose one set four times."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="alike", storage=open_storage(url))
    cfg = SamplerConfig(name=name, seed=3)  # type: ignore[arg-type]
    workers = [
        optuna.load_study(study_name="alike", storage=open_storage(url), sampler=make_sampler(cfg))
        for _ in range(4)
    ]
    for _ in range(2):
        for study in workers:
            trial = study.ask()
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.suggest_int("filters", 8, 64)
    asked = [tuple(sorted(t.params.items())) for t in workers[0].get_trials()]
    assert len(asked) == 8 and len(set(asked)) == 8


def _tpe_proposal(twelfth: TrialState) -> dict[str, float]:
    """What TPE proposes for trial 13 after 12 scored trials and a 13th (number 12) in state
    `twelfth`, with the study seed fixed: trial 13's stream is the same in every call."""
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i in range(12):  # past TPE's 10 start-up trials
        scored = optuna.trial.create_trial(
            value=abs(i / 12 - 0.3), params={"x": i / 12}, distributions=dist
        )
        study.add_trial(scored)
    sampler = make_sampler(SamplerConfig(name="tpe", seed=3))
    other = optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=sampler)
    if twelfth == TrialState.RUNNING:
        other.ask({"x": optuna.distributions.FloatDistribution(0.29, 0.31)})
    else:
        other.tell(other.ask(dist), state=twelfth)
    return other.ask(dist).params


def test_tpe_treats_trials_running_elsewhere_as_bad() -> None:
    """Constant liar: a trial that another worker is running changes what TPE proposes, so
    workers asking while others run do not all pile into the same promising corner. Without it
    TPE ignores running trials, as it ignores failed ones, and the two proposals would match."""
    beside_a_failed_one = _tpe_proposal(TrialState.FAIL)
    assert _tpe_proposal(TrialState.FAIL) == beside_a_failed_one  # trial 13 draws alike
    assert _tpe_proposal(TrialState.RUNNING) != beside_a_failed_one


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_a_trial_samples_by_its_number_whoever_asks(name: str) -> None:
    """Trial N's stream depends on the study seed and N only: two samplers made apart (two
    runs) propose the same for the same trial number, and different sets for different numbers.
    Seeded once per process, every new `run` began its stream again at its first trial."""
    cfg = SamplerConfig(name=name, seed=5)  # type: ignore[arg-type]
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}

    def proposals(count: int) -> list[dict[str, float]]:
        study = optuna.create_study(sampler=make_sampler(cfg))
        return [study.ask(dist).params for _ in range(count)]

    first, again = proposals(4), proposals(4)
    assert first == again
    assert len({p["lr"] for p in first}) == 4


@pytest.mark.slow
def test_extending_a_study_proposes_no_set_it_has(done_copy: Done) -> None:
    """A second `run` of a finished study with a larger budget samples new parameter sets: with
    one seed per worker index it began the same stream again and repeated trial 1 exactly."""
    study_file = str(done_copy.root / "tiny.toml")
    result = runner.invoke(app, ["run", study_file, "--n-trials", "4", *done_copy.args()])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(done_copy.url))
    sets = [
        tuple(sorted(t.params.items())) for t in study.trials if t.state == TrialState.COMPLETE
    ]
    assert len(sets) == 4 and len(set(sets)) == 4


def test_worker_for_missing_study_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="other", storage=url)
    result = runner.invoke(app, ["worker", "ghost", "--storage", url])
    assert result.exit_code == 2 and "no study 'ghost'" in result.output
    assert "(studies: other)" in result.output


def open_fresh_together(url: str) -> None:
    """Four processes create Optuna's tables on a fresh database at the same instant; all of
    them must open it, whichever wins."""
    from race import open_together

    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(4), context.Queue()
    processes = [context.Process(target=open_together, args=(url, barrier, out)) for _ in range(4)]
    for process in processes:
        process.start()
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert results == ["ok"] * 4, results


@pytest.mark.postgres
def test_processes_opening_a_fresh_postgres_database_at_once_all_succeed(
    pg: tuple[str, str],
) -> None:
    """The losers of the race failed with UniqueViolation (3 of 4, every time, before the
    retry)."""
    open_fresh_together(pg[0])


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `run`s started together on a new SQLite file: the losers failed with "table
    alembic_version already exists" (or "studies"), SQLite's word for the same race."""
    open_fresh_together(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.slow
def test_a_queued_trial_goes_to_exactly_one_worker_on_sqlite(tmp_path: Path) -> None:
    """SQLite ignores SELECT … FOR UPDATE: without IMMEDIATE transactions, workers asking at once
    could all pop the same WAITING trial and run it twice. Four real processes ask together,
    three rounds, each after one trial was queued."""
    from race import ask_together

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    rounds, queued, out = 3, context.Queue(), context.Queue()
    barrier = context.Barrier(4)
    procs = [
        context.Process(target=ask_together, args=(url, rounds, queued, barrier, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for _ in range(rounds):
        study.enqueue_trial({"x": 1.0})
        for _ in procs:
            queued.put(True)  # every asker may go on to the barrier of this round
        numbers = [out.get(timeout=120) for _ in procs]
        assert len(set(numbers)) == 4, numbers  # four trials, none handed out twice
    for p in procs:
        p.join(timeout=60)
    fixed = [t for t in study.get_trials() if t.system_attrs.get("fixed_params")]
    assert len(fixed) == 3


def test_device_names_are_read_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planning only (no CUDA call is made): two visible GPUs, 16 cores.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    # cuda:1 means GPU 1 for `run` and `worker` alike (it used to become cuda:0 in one place).
    assert plan_devices("cuda:1", 2, 2) == [("cuda:1", 8), ("cuda:1", 8)]
    assert plan_devices("cuda:1", 1, 1) == [("cuda:1", 16)]
    with pytest.raises(UserError, match="--workers 3 is more than 1 GPU"):
        plan_devices("cuda:1", 3, 2)
    with pytest.raises(UserError, match="cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    for bad in ("gpu", "mps", "cuda:x", ""):
        with pytest.raises(UserError, match="--device must be"):
            resolve_device(bad)


class RecordedProgress:
    """A RunProgress that keeps what it was told."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.decoded: set[str] = set()
        self.views = 0

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def decoding(self, split: str, done: int, total: int) -> None:
        self.decoded.add(split)

    def trials(self, found: list, budget: int) -> None:
        self.views += 1


@pytest.mark.slow
def test_run_study_is_a_function_tests_can_call(demo_root: Path, tmp_path: Path) -> None:
    spec = load_spec(str(write_study(tmp_path, n_trials=2)))
    options = RunOptions(
        storage=f"sqlite:///{tmp_path / 'study.db'}", artifacts=str(tmp_path / "a"),
        data=demo_root, heartbeat_s=1,
    )  # fmt: skip
    progress = RecordedProgress()
    outcome = run_study(spec, options, LaunchOptions(workers=1), progress)
    assert outcome.budget_met and outcome.finished == 2 == outcome.budget
    assert not outcome.interrupted and outcome.worker_exit_codes == (0,)
    assert progress.decoded == {"train", "val"}  # the cache was built once, before the workers
    assert any("2 trials to go with 1 worker(s)" in note for note in progress.notes)
    again = run_study(spec, options, LaunchOptions(workers=1), RecordedProgress())
    assert again.nothing_to_do and again.finished == 2
    with pytest.raises(UserError, match="--workers"):
        LaunchOptions(workers=0)


@pytest.mark.slow
def test_a_study_searching_two_model_families_trains_each_with_its_own_settings(
    demo_root: Path, tmp_path: Path
) -> None:
    path = write_study(tmp_path, n_trials=2, epochs=1)
    path.write_text(
        path.read_text().replace(
            "[space.train.lr]",
            """[model.resnet]
layers = [1, 1, 1, 1]
channels = [8, 8, 8, 8]
stem_stride = 2
[space.model.name]
choices = ["small_cnn", "resnet"]
default = "small_cnn"
[space.model.attention]
choices = ["none", "se"]
default = "none"
[space.train.lr]""",
        )
    )
    spec = load_spec(str(path))
    options = RunOptions(
        storage=f"sqlite:///{tmp_path / 'study.db'}", artifacts=str(tmp_path / "a"),
        data=demo_root, heartbeat_s=1,
    )  # fmt: skip
    study = ensure_study(spec, open_storage(options.storage), None)  # trial 0: the defaults
    study.enqueue_trial({"model.name": "resnet"})  # the sampler fills in resnet's own settings
    assert run_study(spec, options, LaunchOptions(workers=1), RecordedProgress()).budget_met
    cnn, resnet = optuna.load_study(study_name="tiny", storage=options.storage).trials
    assert (cnn.state, resnet.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert "model.dropout" in cnn.params and "model.attention" not in cnn.params
    assert "model.attention" in resnet.params and "model.dropout" not in resnet.params
    built = [build_model(spec.resolve(space.decode(spec, t.params)), 3) for t in (cnn, resnet)]
    assert [type(m).__name__ for m in built] == ["SmallCNN", "ResNet"]


def test_the_live_view_shows_the_metric_the_study_monitors() -> None:
    """It showed val_macro_f1 whatever the study optimised."""
    from rich.console import Console

    from carbrand_search.progress import live_view

    study = optuna.create_study()
    trial = study.ask()
    epoch = epoch_metrics(val_loss=1.25, val_macro_f1=0.5, val_accuracy=0.75)
    trial.set_user_attr("epochs", [epoch.to_dict()])
    trial.set_user_attr("epoch", 2)
    console = Console(width=200, record=True)
    console.print(live_view("s", study.get_trials(), 4, "val_loss", 3))
    text = console.export_text()
    assert "val_loss" in text and "1.250" in text and "0.500" not in text
    assert "2/3" in text  # epoch 2 of 3
