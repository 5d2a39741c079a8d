"""Distillation: the loss, the cached teacher views, the refusals, a distilled study end to end."""

import hashlib
import math
import shutil
from dataclasses import astuple
from pathlib import Path

import optuna
import pytest
import torch
from conftest import Done, write_study, write_tree
from torch import nn
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.config import DataConfig, DistillConfig
from carbrand_search.data.augment import Augment
from carbrand_search.data.imagefolder import scan
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.reports.evaluate import evaluate_split
from carbrand_search.search import record
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.search.study import pin_teacher, pinned_teacher
from carbrand_search.search.teacher import (
    prepare_teacher,
    study_teacher,
    teacher_model,
)
from carbrand_search.search.trained import load_trial_model
from carbrand_search.training.distill import (
    LiveTeacher,
    TeacherViews,
    Teaching,
    distillation_loss,
    draw_views,
    soft_targets,
    teacher_logits,
)
from carbrand_search.training.fit import predict
from carbrand_search.training.parts import augment_for, precision_for
from carbrand_search.training.precision import Precision

runner = CliRunner()
CPU = torch.device("cpu")


def test_the_loss_is_the_hand_computed_mix_of_labels_and_teacher() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
    labels = torch.tensor([0, 2])
    alpha, t = 0.3, 2.0
    ce = -sum(math.log(math.exp(r[y]) / sum(math.exp(v) for v in r)) for r, y in
              zip(logits.tolist(), labels.tolist(), strict=True)) / 2  # fmt: skip
    kl = 0.0
    for s_row, t_row in zip(logits.tolist(), teacher.tolist(), strict=True):
        ps = [math.exp(v / t) / sum(math.exp(u / t) for u in s_row) for v in s_row]
        pt = [math.exp(v / t) / sum(math.exp(u / t) for u in t_row) for v in t_row]
        kl += sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    expected = (1 - alpha) * ce + alpha * t**2 * kl / 2
    loss = distillation_loss(logits, labels, teacher, nn.CrossEntropyLoss(), alpha, t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_teachers_soft_targets_are_summarised_as_by_hand() -> None:
    # One image, two views, 3 classes, label 0. At T = 1 the first view is (0.5, 0.25, 0.25):
    # top class right, the other two even (entropy 1 of uniform); the second is (0.1, 0.6, 0.3):
    # top class wrong, the rest (0.25, 0.75) with entropy 0.8113 of ln 2.
    logits = torch.tensor([[[4.0, 2.0, 2.0], [1.0, 6.0, 3.0]]]).log()
    rest = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    found = soft_targets(logits, torch.tensor([0]), 1.0)
    assert found.agreement == pytest.approx(0.5)
    assert found.label_prob == pytest.approx((0.5 + 0.1) / 2)
    assert found.others_entropy == pytest.approx((1 + rest) / 2)
    # T divides the logits before the softmax.
    hotter = soft_targets(logits * 2, torch.tensor([0]), 2.0)
    assert astuple(hotter) == pytest.approx(astuple(found))


def test_alpha_zero_is_exactly_the_plain_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    plain = criterion(logits, labels)
    assert torch.equal(distillation_loss(logits, labels, teacher, criterion, 0.0, 4.0), plain)
    assert not torch.equal(distillation_loss(logits, labels, teacher, criterion, 0.5, 4.0), plain)


class _EdgeMeans(nn.Module):
    """A 'teacher' that reports what it sees: the mean of its input's left and right columns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, :, 0].mean(1), x[:, 0, :, -1].mean(1)], dim=1)


def _ramps(n: int, size: int) -> torch.Tensor:
    """n uint8 images whose red channel rises from left to right: a column tells where it is."""
    ramp = torch.linspace(0, 255, size).round().to(torch.uint8)
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    images[..., 0] = ramp.view(1, 1, size)
    return images


def test_teacher_and_student_see_the_same_crop_and_flip_at_their_own_sizes() -> None:
    n, k = 6, 4
    data = DataConfig(cache_size=128, image_size=64, crop="resized", min_scale=0.3, hflip=True,
                      color_jitter=0.0)  # fmt: skip
    views = draw_views(n, k, data, torch.Generator().manual_seed(0))
    assert views.flips.any() and not views.flips.all()
    plain = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: columns stay readable
    teacher_aug = Augment(DataConfig(cache_size=128, image_size=64, color_jitter=0.0), *plain)
    student_aug = Augment(DataConfig(cache_size=48, image_size=24, color_jitter=0.0), *plain)
    teacher_split = DeviceSplit.from_arrays(
        _ramps(n, 128).numpy(), torch.zeros(n, dtype=torch.int64).numpy(), CPU
    )
    cached = TeacherViews(
        views, teacher_logits(_EdgeMeans(), teacher_split, views, teacher_aug, Precision(), 4)
    )
    assert cached.logits.shape == (n, k, 2)
    teaching = Teaching(cached, alpha=0.5, temperature=1.0)
    index = torch.tensor([4, 1, 3, 0, 5])
    x, loss = teaching.batch(
        student_aug, index, _ramps(n, 48)[index], torch.Generator().manual_seed(1),
        nn.CrossEntropyLoss(),
    )  # fmt: skip
    assert x.shape == (5, 3, 24, 24)
    seen = _EdgeMeans()(x)
    # The teacher's logits the loss uses are those of the very view the student was shown:
    # the same edges of the same ramp (a flip swaps them), at 64 px and at 24 px.
    taught = loss.keywords["teacher_logits"]
    assert torch.allclose(seen, taught, atol=0.03)
    assert (taught[:, 0] > taught[:, 1]).any()  # some of the views shown are mirrored


def test_a_teacher_on_every_batch_sees_the_students_fresh_crop_and_flip() -> None:
    n = 16
    plain = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: columns stay readable
    teacher_aug = Augment(DataConfig(cache_size=128, image_size=64, color_jitter=0.0), *plain)
    student_data = DataConfig(cache_size=48, image_size=24, crop="resized", min_scale=0.3,
                              hflip=True, color_jitter=0.0)  # fmt: skip
    teacher_split = DeviceSplit.from_arrays(
        _ramps(n, 128).numpy(), torch.zeros(n, dtype=torch.int64).numpy(), CPU
    )
    teaching = Teaching(
        LiveTeacher(_EdgeMeans(), teacher_split, teacher_aug, Precision()), 0.5, 1.0
    )
    index = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    shown = []
    for _ in range(2):
        x, loss = teaching.batch(
            Augment(student_data, *plain), index, _ramps(n, 48)[index], g, nn.CrossEntropyLoss()
        )
        taught = loss.keywords["teacher_logits"]
        # The teacher saw the very crop and flip the student was shown, at 64 px and at 24 px.
        assert torch.allclose(_EdgeMeans()(x), taught, atol=0.03)
        assert (taught[:, 0] > taught[:, 1]).any() and (taught[:, 0] < taught[:, 1]).any()
        shown.append(x)
    assert not torch.allclose(shown[0], shown[1])  # a fresh view each step


def _student(
    folder: Path, teacher: str = "teacher", n_trials: int = 2, views: int = 3, **extra: str
) -> Path:
    lines = "\n".join(f"{k} = {v}" for k, v in extra.items())
    path = folder / "student.toml"
    path.write_text(
        f"""
[study]
n_trials = {n_trials}
[data]
cache_size = 32
image_size = 24
crop = "resized"
[model]
name = "small_cnn"
filters = [8, 16]
dense_units = 32
batch_norm = true
[train]
epochs = 2
[distill]
teacher = "{teacher}"
views = {views}
{lines}
[space.distill.alpha]
low = 0.2
high = 0.8
default = 0.5
[sampler]
name = "random"
[pruner]
collapse = false
optuna = "none"
"""
    )
    return path


def _run(study: Path, done: Done, *extra: str):
    return runner.invoke(app, ["run", str(study), *done.args(), *extra])


@pytest.mark.slow
def test_a_distilled_study_end_to_end(demo_root: Path, tmp_path: Path) -> None:
    done = Done(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", demo_root, tmp_path)
    teacher = write_study(tmp_path, name="teacher", n_trials=1, epochs=2)
    result = _run(teacher, done)
    assert result.exit_code == 0, result.output
    result = _run(_student(tmp_path), done)
    assert result.exit_code == 0, result.output
    assert "teacher: teacher trial 0" in result.output and "computed now" in result.output
    assert "it gives the label" in result.output and "of the uniform entropy" in result.output
    assert (
        pinned_teacher(open_storage(done.url), "student")
        == record.read(optuna.load_study(study_name="student", storage=done.url).trials[0]).teacher
    )
    storage = open_storage(done.url)
    teacher_trial = optuna.load_study(study_name="teacher", storage=storage).trials[0]
    weights = Path(done.artifacts) / record.read(teacher_trial).checkpoint  # type: ignore
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    students = optuna.load_study(study_name="student", storage=storage).trials
    assert [t.state.name for t in students] == ["COMPLETE", "COMPLETE"]
    assert {record.read(t).teacher for t in students} == {record.TeacherRef("teacher", 0, digest)}
    assert len({t.params["distill.alpha"] for t in students}) == 2
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", "teacher", "student", "--out", str(out), *done.store_args()]
    )
    assert result.exit_code == 0, result.output
    compared = (out / "compare.md").read_text()
    assert "| none |" in compared and f"teacher trial 0 \\(weights {digest[:12]}\\)" in compared
    report = tmp_path / "rep"
    result = runner.invoke(app, ["report", "student", "--out", str(report), *done.store_args()])
    assert result.exit_code == 0, result.output
    assert f"Teacher: teacher trial 0 (weights {digest[:12]})" in (report / "report.md").read_text(
    ).replace("\\", "")  # fmt: skip


@pytest.mark.slow
def test_a_study_whose_teacher_runs_on_every_batch(done_copy: Done, tmp_path: Path) -> None:
    result = _run(_student(tmp_path, "tiny", n_trials=1, views=0), done_copy)
    assert result.exit_code == 0, result.output
    assert "teacher: tiny trial" in result.output and "runs on every batch" in result.output
    (trial,) = optuna.load_study(study_name="student", storage=done_copy.url).trials
    assert trial.state.name == "COMPLETE"
    assert record.read(trial).teacher == pinned_teacher(open_storage(done_copy.url), "student")
    cached = [p.name for p in (tmp_path / "cache").iterdir()]
    assert cached and not [name for name in cached if name.startswith("teacher-")]


def test_cached_views_are_reused_and_rebuilt_when_the_weights_change(done_copy: Done) -> None:
    storage, artifacts = open_storage(done_copy.url), artifact_store(str(done_copy.artifacts))
    tree = scan(done_copy.data)
    cfg = DistillConfig(teacher="tiny", trial=0, views=2)
    student = DataConfig(cache_size=32, image_size=24, crop="resized")
    cache = done_copy.root / "cache"

    def prepared():
        tm = teacher_model(cfg, storage, artifacts, tree.classes)
        return prepare_teacher(cfg, student, tm, tree.splits["train"], cache, False, CPU)

    first, again = prepared(), prepared()
    assert (first.reused, again.reused) == (False, True)
    assert torch.equal(first.source.logits, again.source.logits)
    study = optuna.load_study(study_name="tiny", storage=storage)
    zero, one = (record.read(t).checkpoint for t in study.trials[:2])
    assert zero and one
    # New weights under the same trial and artifact id: the views are computed again.
    shutil.copy(done_copy.artifacts / one, done_copy.artifacts / zero)
    rebuilt = prepared()
    assert not rebuilt.reused and rebuilt.ref.weights_sha256 != first.ref.weights_sha256
    assert not torch.equal(rebuilt.source.logits, first.source.logits)


def test_teachers_that_cannot_teach_are_refused_before_any_trial(
    done_copy: Done, tmp_path: Path
) -> None:
    def refused(study: Path, *extra: str, data: Path | None = None) -> str:
        args = [*done_copy.store_args(), "--data", str(data or done_copy.data), *extra]
        result = runner.invoke(app, ["run", str(study), *args])
        assert result.exit_code == 2, result.output
        assert "student" not in optuna.get_all_study_names(done_copy.url)
        assert "Traceback" not in result.output
        return result.output

    assert "distill.teacher 'nope': no such study" in refused(_student(tmp_path, "nope"))
    empty = write_study(tmp_path, name="empty")
    assert runner.invoke(app, ["create", str(empty), "--storage", done_copy.url]).exit_code == 0
    assert "has no complete trial yet" in refused(_student(tmp_path, "empty"))
    assert "trial 7" in refused(_student(tmp_path, "tiny", trial="7"))
    other = write_tree(tmp_path / "other", {"Audi": 2, "Fiat": 2})
    assert "classes differ" in refused(_student(tmp_path, "tiny"), data=other)
    shutil.rmtree(done_copy.artifacts)
    done_copy.artifacts.mkdir()
    assert "missing or corrupt" in refused(_student(tmp_path, "tiny"))


def test_mixing_and_searched_view_settings_are_refused_with_a_teacher(tmp_path: Path) -> None:
    def create(study: Path):
        return runner.invoke(
            app, ["create", str(study), "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"]
        )

    text = _student(tmp_path).read_text().replace("[train]", "[train]\nmixup_alpha = 0.2")
    (tmp_path / "mixed.toml").write_text(text)
    result = create(tmp_path / "mixed.toml")
    assert result.exit_code == 2 and "must be 0 with a distill.teacher" in result.output
    text = _student(tmp_path).read_text() + (
        "[space.data.min_scale]\nlow = 0.3\nhigh = 1.0\ndefault = 0.5\n"
    )
    (tmp_path / "searched.toml").write_text(text)
    result = create(tmp_path / "searched.toml")
    assert result.exit_code == 2 and "space.data.min_scale: cannot be searched" in result.output


def test_tta_averages_each_image_with_its_mirror(done: Done) -> None:
    study = optuna.load_study(study_name="tiny", storage=done.url)
    tm = load_trial_model(study, study.best_trial, artifact_store(str(done.artifacts)))
    cache = done.root / "cache"
    plain = evaluate_split(tm, done.data, cache)
    tta = evaluate_split(tm, done.data, cache, tta=True)
    split = DeviceSplit.from_arrays(plain.images, plain.labels, CPU)
    mirrored, _ = predict(
        tm.model, split, augment_for(tm.config), 64, precision_for(tm.config, CPU), flip=True
    )
    expected = (torch.from_numpy(plain.probs) + mirrored.softmax(1)) / 2
    assert torch.allclose(torch.from_numpy(tta.probs), expected, atol=1e-6)
    assert not torch.allclose(torch.from_numpy(tta.probs), torch.from_numpy(plain.probs))


def test_a_student_study_keeps_the_teacher_trial_its_first_run_pinned(done_copy: Done) -> None:
    storage, artifacts = open_storage(done_copy.url), artifact_store(str(done_copy.artifacts))
    teacher = optuna.load_study(study_name="tiny", storage=storage)
    other = next(t.number for t in teacher.trials if t.number != teacher.best_trial.number)
    student = optuna.create_study(study_name="student", storage=storage)
    pin_teacher(student, record.TeacherRef("tiny", other, "whatever was there then"))
    found = study_teacher(
        DistillConfig(teacher="tiny", views=1), DataConfig(cache_size=32, image_size=24),
        storage, artifacts, scan(done_copy.data), done_copy.root / "cache", False, CPU,
        student="student",
    )  # fmt: skip
    assert found is not None and found.ref.trial == other  # not the best, which cfg asks for
