"""Resume: `fit` continued from any saved state (mid-epoch or at an epoch's end) ends exactly as
the uninterrupted run, weights and history alike; the state survives a trip through bytes; saved
states no retry will take up are swept."""

import io
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_train import small_config

from carbrand_search.search import record
from carbrand_search.search.record import ResumePoint
from carbrand_search.search.resume import sweep
from carbrand_search.search.retry import queue_retry
from carbrand_search.search.storage import artifact_store
from carbrand_search.search.study import trials
from carbrand_search.training.fit import fit
from carbrand_search.training.parts import load_training_data, new_model
from carbrand_search.training.state import FitState


class KeepAll:
    """A checkpointer that keeps every state `fit` hands it (every_s = 0: after every batch)."""

    every_s = 0.0

    def __init__(self) -> None:
        self.states: list[FitState] = []

    def __call__(self, state: FitState) -> None:
        self.states.append(FitState.from_bytes(state.to_bytes()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        # dropout (torch's generator), random crops and flips (augmentation's), one-cycle LR
        ("model.dropout=0.3", "train.scheduler=onecycle", "train.optimizer=sgd"),
        # Mixup/CutMix (NumPy's generator), balanced draws, plateau LR with its own state
        ("train.mixup_alpha=0.4", "train.cutmix_alpha=1.0", "train.sampling=balanced",
         "train.scheduler=plateau", "train.plateau_patience=0"),
    ],
)  # fmt: skip
def test_resumed_fit_ends_exactly_like_the_uninterrupted_one(
    demo_root: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    config = small_config("train.epochs=3", "train.batch_size=64", *overrides)
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    saved = KeepAll()
    whole = fit(new_model(config, 6), data, config, checkpointer=saved)
    positions = [(s.epoch, s.batch) for s in saved.states]
    steps = data.train.num_batches(64)
    assert positions == [(e, b) for e in range(3) for b in range(steps) if (e, b) != (0, 0)]
    mid_epoch = next(s for s in saved.states if s.epoch == 1 and s.batch == 2)
    boundary = next(s for s in saved.states if s.epoch == 2 and s.batch == 0)
    for state in (mid_epoch, boundary):
        model = new_model(replace(config, train=replace(config.train, seed=99)), 6)
        resumed = fit(model, data, config, resume=state)
        assert [replace(m, seconds=0) for m in resumed.history] == [
            replace(m, seconds=0) for m in whole.history
        ]
        assert resumed.best_epoch == whole.best_epoch
        for key, value in whole.best_state.items():
            assert torch.equal(resumed.best_state[key], value), key


def test_resume_points_no_retry_took_up_are_swept(tmp_path: Path) -> None:
    artifacts = artifact_store(str(tmp_path / "a"))
    study = optuna.create_study()

    def failed_with_a_resume_point() -> int:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        artifacts.write(f"resume-{trial.number}", io.BytesIO(b"state"))
        record.resume_saved(trial, ResumePoint(f"resume-{trial.number}", 1, 0))
        study.tell(trial, state=TrialState.FAIL)
        return trial.number

    given_up, retried = failed_with_a_resume_point(), failed_with_a_resume_point()
    assert queue_retry(study, retried, {"x": 0.5}, "killed")
    assert sweep(trials(study), artifacts) == 1
    assert not (tmp_path / "a" / f"resume-{given_up}").exists()
    assert (tmp_path / "a" / f"resume-{retried}").exists()  # its retry is still to run


class _Planted:
    """A pickle that runs code when it is loaded: what a writable store could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_resume_point_is_data_only(tmp_path: Path) -> None:
    """Resume points are safetensors with a JSON header, so loading one runs no code on any
    torch (torch's `weights_only` pickle loader had bypasses: CVE-2025-32434 before 2.6). A
    pickle in its place, planted in the store, is refused without being unpickled."""
    import pickle

    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="not a resume point"):
        FitState.from_bytes(pickle.dumps({"model": _Planted(marker)}))
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a resume point"):
        FitState.from_bytes(b"\x00" * 64)
