"""Each failure kind injected into real worker processes (a `sitecustomize` the test writes makes
them fail at a chosen point): the states that result, the exact budget, the same parameters on
every retry, and a retry that resumes where the failed trial stopped."""

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import (
    FINISHED,
    cli,
    injected,
    start_cli,
    stopped,
    trials_of,
    wait_for,
    write_study,
)
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file

from carbrand_search.search import record
from carbrand_search.search.storage import open_storage

# The first time trial 0 has saved the resume point after epoch 2, its worker stops itself, so
# the test kills it at a known point however fast it trains.
pytestmark = pytest.mark.slow  # real worker processes, made to fail

STOP_AFTER_EPOCH_2 = """
import os, signal
from carbrand_search.search import resume
_save = resume.ResumeSaver.__call__
def _save_then_stop(self, state):
    _save(self, state)
    if (state.epoch, state.batch) == (2, 0) and self.trial.number == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
resume.ResumeSaver.__call__ = _save_then_stop
"""

# Trial 0 runs out of memory in the first batch after its resume point of epoch 1.
OOM_IN_EPOCH_2 = """
import torch
from carbrand_search.search import resume
from carbrand_search.training import fit
_save, _step, armed = resume.ResumeSaver.__call__, fit.train_step, []
def _save_and_arm(self, state):
    _save(self, state)
    if (state.epoch, state.batch) == (1, 0) and self.trial.number == 0:
        armed.append(True)
def _step_or_oom(*args, **kwargs):
    if armed:
        armed.clear()
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return _step(*args, **kwargs)
resume.ResumeSaver.__call__ = _save_and_arm
fit.train_step = _step_or_oom
"""

# The artifact store refuses the second resume point written (trial 0, after epoch 2).
STORE_FULL_ONCE = """
import errno
from carbrand_search.search import storage
_write, resume_writes = storage.WholeFileArtifactStore.write, []
def _write_or_fail(self, artifact_id, body):
    if artifact_id.startswith("resume-"):
        resume_writes.append(artifact_id)
        if len(resume_writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
    return _write(self, artifact_id, body)
storage.WholeFileArtifactStore.write = _write_or_fail
"""

# The artifact store fills up after trial 0's best weights were written: its first picture
# fails (the second write that is not a resume point).
DISK_FULL_AT_THE_PICTURES = """
import errno
from carbrand_search.search import storage
_write, writes = storage.WholeFileArtifactStore.write, []
def _write_or_fail(self, artifact_id, body):
    if not artifact_id.startswith("resume-"):
        writes.append(artifact_id)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
    return _write(self, artifact_id, body)
storage.WholeFileArtifactStore.write = _write_or_fail
"""

# Every training step of every trial divides by zero.
BUG = """
from carbrand_search.training import fit
def _broken(*args, **kwargs):
    return 1 / 0
fit.train_step = _broken
"""


def run_args(study: Path, url: str, data: Path, artifacts: Path) -> list[str]:
    return [
        "run", str(study), "--storage", url, "--data", str(data), "--artifacts", str(artifacts),
        "--workers", "1", "--heartbeat", "1",
    ]  # fmt: skip


def run_injected(
    data: Path, tmp_path: Path, code: str, *, n_trials: int, epochs: int
) -> tuple[subprocess.CompletedProcess, str, Path]:
    """`run` of a tiny study with `code` injected into its processes: (the finished process,
    the storage URL, the artifact folder)."""
    study = write_study(tmp_path, n_trials=n_trials, epochs=epochs)
    url, artifacts = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "a"
    done = subprocess.run(
        cli(*run_args(study, url, data, artifacts)),
        env=injected(tmp_path / "inject", code), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done, url, artifacts


def weights(artifacts: Path, trial: FrozenTrial) -> dict[str, torch.Tensor]:
    checkpoint = record.read(trial).checkpoint
    assert checkpoint is not None
    return load_file(str(artifacts / checkpoint))


def assert_no_resume_state_left(artifacts: Path, found: list[FrozenTrial]) -> None:
    assert not list(artifacts.glob("resume-*"))
    assert all(record.read(t).resume is None for t in found if t.state in FINISHED)


def test_a_sigkilled_trial_resumes_from_its_last_epoch_and_ends_as_if_never_stopped(
    demo_root: Path, tmp_path: Path
) -> None:
    study = write_study(tmp_path, n_trials=1, epochs=4)
    url, artifacts = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "a"
    args = run_args(study, url, demo_root, artifacts)
    proc = start_cli(*args, env=injected(tmp_path / "inject", STOP_AFTER_EPOCH_2))

    def victim_stopped() -> bool:
        running = [t for t in trials_of(url) if t.state == TrialState.RUNNING]
        pid = running and record.read(running[0]).pid
        return bool(pid) and stopped(pid)

    wait_for(victim_stopped)
    (victim,) = trials_of(url)
    os.kill(record.read(victim).pid or 0, signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, output  # its only worker died: the budget is not met yet
    again = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    found = trials_of(url)
    assert [t.state for t in found] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = record.read(found[1])
    assert retry.retry_of == 0 and found[1].params == victim.params
    assert retry.resumed_from == record.ResumedFrom(trial=0, epoch=2, batch=0)
    assert [e.epoch for e in retry.epochs] == [1, 2, 3, 4]
    assert_no_resume_state_left(artifacts, found)

    # The same study, never interrupted: the same weights, bit for bit.
    reference_url, reference_artifacts = f"sqlite:///{tmp_path / 'ref.db'}", tmp_path / "ref"
    whole = subprocess.run(
        cli(*run_args(study, reference_url, demo_root, reference_artifacts)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stdout + whole.stderr
    (reference,) = trials_of(reference_url)
    assert reference.params == victim.params
    untimed = [replace(e, seconds=0.0) for e in retry.epochs]
    assert [replace(e, seconds=0.0) for e in record.read(reference).epochs] == untimed
    expected, resumed = weights(reference_artifacts, reference), weights(artifacts, found[1])
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("oom", OOM_IN_EPOCH_2, "OutOfMemoryError: CUDA out of memory"),
        ("storage", STORE_FULL_ONCE, "cannot write a resume point to the artifact store"),
    ],
)
def test_an_infrastructure_failure_is_retried_with_the_same_parameters_from_its_resume_point(
    demo_root: Path, tmp_path: Path, kind: str, code: str, reason: str
) -> None:
    done, url, artifacts = run_injected(demo_root, tmp_path, code, n_trials=2, epochs=3)
    assert done.returncode == 0, done.stdout + done.stderr
    found = trials_of(url)
    assert sum(t.state in FINISHED for t in found) == 2  # the failure used no budget
    assert [t.state for t in found].count(TrialState.FAIL) == 1
    assert all(t.state in (*FINISHED, TrialState.FAIL) for t in found)  # none RUNNING/WAITING
    failed = record.read(found[0])
    assert found[0].state == TrialState.FAIL and failed.failure_kind == kind
    assert reason in (failed.fail_reason or "")
    (retry,) = [t for t in found if record.read(t).retry_of == 0]
    assert retry.params == found[0].params and retry.state == TrialState.COMPLETE
    assert record.read(retry).resumed_from == record.ResumedFrom(trial=0, epoch=1, batch=0)
    assert_no_resume_state_left(artifacts, found)
    shown = subprocess.run(
        cli("status", "tiny", "--storage", url, "--artifacts", str(artifacts)),
        env={**os.environ, "COLUMNS": "400"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"{kind}: " in shown.stdout
    assert "cpu, retry of #0, resumed after epoch 1" in shown.stdout


def test_a_trial_failed_by_a_full_store_leaves_no_files_and_no_listings(
    demo_root: Path, tmp_path: Path
) -> None:
    """Its weights were written, then its picture met a full disk: the weights are removed, and
    nothing is listed on the failed trial (Optuna lists an upload before writing it, so a failed
    write used to leave a listing of a file that does not exist). Every file left in the store
    is one a finished trial lists."""
    done, url, artifacts = run_injected(
        demo_root, tmp_path, DISK_FULL_AT_THE_PICTURES, n_trials=2, epochs=2
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = trials_of(url)
    failed = found[0]
    assert failed.state == TrialState.FAIL and record.read(failed).failure_kind == "storage"
    storage = open_storage(url)
    assert get_all_artifact_meta(failed, storage=storage) == []
    listed = {
        meta.artifact_id
        for t in found
        if t.state in FINISHED
        for meta in get_all_artifact_meta(t, storage=storage)
    }
    assert {p.name for p in artifacts.iterdir() if not p.name.startswith(".")} == listed
    assert len(listed) == 2 * 3  # weights, curves and confusion matrix of each finished trial


def test_a_bug_stops_the_worker_at_once_and_is_not_retried(
    demo_root: Path, tmp_path: Path
) -> None:
    done, url, artifacts = run_injected(demo_root, tmp_path, BUG, n_trials=3, epochs=2)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "trial 0 failed with a bug: ZeroDivisionError: division by zero" in done.stderr
    assert "carbrand_search/training/fit.py" in done.stderr  # the innermost frame of ours
    (trial,) = trials_of(url)  # stopped at the first: nothing queued, nothing else started
    assert trial.state == TrialState.FAIL and record.read(trial).failure_kind == "bug"
    assert not list(artifacts.glob("resume-*"))
