"""Warm start: a new study runs its defaults first; `run --from` queues another study's best
parameter sets that fit this space, and names those it skips."""

from pathlib import Path

import optuna
import pytest
from conftest import write_study
from optuna.trial import TrialState
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.search import record, space
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import open_storage
from carbrand_search.search.study import budget, ensure_study
from carbrand_search.search.warmstart import enqueue_from

runner = CliRunner()


def _finished_study(spec_path: Path, lrs: list[float]) -> optuna.Study:
    """An in-memory study of `spec_path` with one complete trial per lr; value = lr."""
    spec = load_spec(str(spec_path))
    study = optuna.create_study(study_name="source", direction=spec.direction)
    for lr in lrs:
        study.enqueue_trial({"train.lr": lr, "model.dropout": 0.2})
        trial = study.ask()
        space.sample(trial, spec)
        study.tell(trial, lr)
    return study


def test_new_study_queues_its_defaults_first(tmp_path: Path) -> None:
    spec = load_spec(str(write_study(tmp_path)))
    storage = optuna.storages.InMemoryStorage()
    study = ensure_study(spec, storage, None)
    ensure_study(spec, storage, None)  # loading it again queues nothing more
    [first] = study.get_trials()
    assert first.state == TrialState.WAITING
    assert record.read(first).warm_start == "defaults"
    assert first.system_attrs["fixed_params"] == space.encode(spec.defaults())


def test_from_queues_exactly_top_k_that_fit_and_names_the_rest(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    # Source searched lr in [1e-3, 1e-2]; this space only goes up to 5e-3.
    source = _finished_study(write_study(tmp_path / "a"), [9e-3, 2e-3, 8e-3, 4e-3, 3e-3])
    narrow = "low = 1e-3\nhigh = 5e-3\nlog = true\ndefault = 3e-3"
    spec = load_spec(str(write_study(tmp_path, lr=narrow)))
    source_spec = load_spec(str(tmp_path / "a" / "tiny.toml"))
    target = optuna.create_study(direction="maximize")
    result = enqueue_from(target, spec, source, source_spec, top=2)
    assert result.enqueued == (3, 4)  # best first among those that fit: 4e-3, then 3e-3
    assert [n for n, _ in result.skipped] == [0, 2]  # 9e-3 and 8e-3, both better, both outside
    assert all("train.lr" in why and "outside this space" in why for _, why in result.skipped)
    queued = target.get_trials()
    assert [t.system_attrs["fixed_params"]["train.lr"] for t in queued] == [4e-3, 3e-3]
    assert [record.read(t).warm_start for t in queued] == ["source trial 3", "source trial 4"]
    again = enqueue_from(target, spec, source, source_spec, top=1)  # nothing queued twice
    assert again.enqueued == (1,)  # 2e-3: the best that fits and is not there yet
    assert (3, "already in this study") in again.skipped


def test_from_skips_sets_with_parameters_this_space_does_not_search(tmp_path: Path) -> None:
    source = _finished_study(write_study(tmp_path), [5e-3])
    source_spec = load_spec(str(tmp_path / "tiny.toml"))
    lr_only = tmp_path / "lr-only.toml"
    lr_only.write_text(
        source_spec.text.split("[space.model.dropout]")[0] + '[sampler]\nname = "random"\n'
    )
    spec = load_spec(str(lr_only))
    result = enqueue_from(optuna.create_study(), spec, source, source_spec, top=1)
    assert result.enqueued == ()
    assert result.skipped == ((0, "model.dropout is not searched here"),)


@pytest.mark.slow
def test_run_from_through_the_cli(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--storage", url, "--data", str(demo_root), "--artifacts", str(tmp_path / "a")]
    first = write_study(tmp_path, name="first", n_trials=2, epochs=1)
    assert runner.invoke(app, ["run", str(first), *common]).exit_code == 0
    other_default = "low = 1e-3\nhigh = 1e-2\nlog = true\ndefault = 5e-3"
    second = write_study(tmp_path, name="second", n_trials=2, epochs=1, lr=other_default)
    result = runner.invoke(app, ["run", str(second), *common, "--from", "first", "--top", "1"])
    assert result.exit_code == 0, result.output
    source = optuna.load_study(study_name="first", storage=open_storage(url))
    best = max(source.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value or 0)
    assert f"--from first: queued trials {best.number} as warm starts" in result.output
    trials = optuna.load_study(study_name="second", storage=open_storage(url)).get_trials()
    assert [record.read(t).warm_start for t in trials] == [
        "defaults",
        f"first trial {best.number}",
    ]
    assert trials[1].params == best.params
    missing = runner.invoke(
        app, ["run", str(second), *common, "--from", "nope", "--n-trials", "3"]
    )
    assert (
        missing.exit_code == 2 and "--from nope: no such study in this storage" in missing.output
    )
    study = optuna.load_study(study_name="second", storage=open_storage(url))
    assert budget(study) == 2  # refused before anything was stored
