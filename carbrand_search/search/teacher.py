"""A study's teacher: a trial of another study in the same storage, checked before any trial
runs, and its outputs for K fixed views of every training image, computed once per study and
kept beside the decoded-image cache, keyed by the teacher's weights and the view recipe; or,
with `views = 0`, the teacher itself, run on every batch."""

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from carbrand_search.core.config import DataConfig, DistillConfig
from carbrand_search.core.errors import UserError
from carbrand_search.data.cache import cache_key, load_or_build, locked
from carbrand_search.data.imagefolder import ImageTree, Split
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.search.record import TeacherRef
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import best_trials, pinned_teacher, stored_spec, trials
from carbrand_search.search.trained import TrialModel, load_trial_model
from carbrand_search.training.distill import (
    LiveTeacher,
    SoftTargets,
    TeacherViews,
    Views,
    draw_views,
    soft_targets,
    teacher_logits,
)
from carbrand_search.training.parts import augment_for, precision_for

VIEWS_VERSION = 1
VIEW_SEED = 0  # views are the same for every trial of a study, and between studies
FILE, META = "views.safetensors", "meta.json"


@dataclass(frozen=True)
class Teacher:
    """The teacher a study's trials learn from: its outputs for the training views, or (with
    `views = 0`) the model to run on every batch."""

    ref: TeacherRef
    source: TeacherViews | LiveTeacher
    reused: bool  # the views came from the cache
    targets: SoftTargets | None  # its outputs for the cached views at the study's temperature


def study_teacher(
    cfg: DistillConfig,
    data: DataConfig,
    storage: optuna.storages.BaseStorage,
    artifacts: ArtifactStore,
    tree: ImageTree,
    cache_root: Path,
    skip_bad: bool,
    device: torch.device,
    *,
    student: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Teacher | None:
    """The teacher of study `student` with `[distill]` settings `cfg` (its trial as pinned
    by the study's first run), its views or itself on `device`; None when the study has no
    teacher."""
    if not cfg.on:
        return None
    ref = pinned_teacher(storage, student)
    if ref is not None:
        cfg = replace(cfg, trial=ref.trial)
    tm = teacher_model(cfg, storage, artifacts, tree.classes)
    return prepare_teacher(
        cfg, data, tm, tree.splits["train"], cache_root, skip_bad, device, on_progress
    )


def teacher_model(
    cfg: DistillConfig,
    storage: optuna.storages.BaseStorage,
    artifacts: ArtifactStore,
    classes: tuple[str, ...],
) -> TrialModel:
    """The teacher trial's model, or a one-line UserError: no such study, no complete trial,
    another class list, weights removed or unreadable."""
    where = f"distill.teacher {cfg.teacher!r}"
    try:
        study = optuna.load_study(study_name=cfg.teacher, storage=storage)
    except KeyError:
        raise UserError(f"{where}: no such study in this storage") from None
    trial = _chosen_trial(study, cfg, where)
    try:
        model = load_trial_model(study, trial, artifacts)
    except UserError as e:
        raise UserError(f"{where}: {e}") from e
    model.check_classes(classes, where)
    return model


def _chosen_trial(study: optuna.Study, cfg: DistillConfig, where: str) -> FrozenTrial:
    found = trials(study)
    if cfg.trial == -1:
        ranked = best_trials(found, stored_spec(study).direction)
        if not ranked:
            raise UserError(f"{where}: the study has no complete trial yet to teach with")
        return ranked[0]
    chosen = [t for t in found if t.number == cfg.trial]
    if not chosen:
        raise UserError(f"distill.trial: {cfg.teacher!r} has no trial {cfg.trial}")
    if chosen[0].state != TrialState.COMPLETE:
        raise UserError(
            f"distill.trial: trial {cfg.trial} of {cfg.teacher!r} is {chosen[0].state.name}; "
            "only a complete trial can teach"
        )
    return chosen[0]


def prepare_teacher(
    cfg: DistillConfig,
    data: DataConfig,
    tm: TrialModel,
    train: Split,
    cache_root: Path,
    skip_bad: bool,
    device: torch.device,
    on_progress: Callable[[int, int], None] | None = None,
) -> Teacher:
    """The teacher's outputs for `cfg.views` views of every image of `train`, drawn with the
    student's augmentation `data`, computed on `device` once, then read from the cache; or
    with `views = 0` the teacher model itself and `train` at its cache size, to run on every
    batch. On `device`."""
    # The teacher sees each view in the student's geometry (`data.fit`) at its own cache size
    # and resolution, so a box is the same part of the same photo for both.
    size, fit = tm.config.data.cache_size, data.fit
    ref = TeacherRef(cfg.teacher, tm.trial.number, tm.weights_sha256)
    if cfg.live:
        cached = load_or_build(train, size, fit, cache_root, skip_bad)
        precision = precision_for(tm.config, device)
        model = precision.prepare(tm.model.to(device).eval()).requires_grad_(False)
        split = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        live = LiveTeacher(model, split, augment_for(tm.config), precision)
        return Teacher(ref, live, False, None)
    recipe = {
        "views": cfg.views,
        "min_scale": data.min_scale,
        "hflip": data.hflip,
        "color_jitter": data.color_jitter,
        "seed": VIEW_SEED,
    }
    key = hashlib.sha256(
        json.dumps(
            [VIEWS_VERSION, tm.weights_sha256, tm.config.to_dict(), recipe,
             cache_key(train, size, fit), skip_bad]
        ).encode()
    ).hexdigest()  # fmt: skip
    folder = cache_root / f"teacher-{train.name}-{key[:24]}"
    stored = _read(folder, key)
    reused = stored is not None
    if stored is None:
        with locked(cache_root / f"{folder.name}.lock"):
            stored = _read(folder, key)  # another worker may have built it meanwhile
            reused = stored is not None
            if stored is None:
                cached = load_or_build(train, size, fit, cache_root, skip_bad)
                split = DeviceSplit.from_arrays(cached.images, cached.labels, device)
                g = torch.Generator().manual_seed(VIEW_SEED)
                views = draw_views(len(split), cfg.views, data, g)
                logits = teacher_logits(
                    tm.model.to(device), split, views.to(device), augment_for(tm.config),
                    precision_for(tm.config, device), on_progress=on_progress,
                )  # fmt: skip
                _write(folder, key, TeacherViews(views, logits), cached.labels, ref, recipe)
                stored = _read(folder, key)
    if stored is None:
        raise UserError(f"teacher views {folder} could not be read back right after writing")
    teacher_views, labels = stored
    targets = soft_targets(teacher_views.logits, labels, cfg.temperature)
    return Teacher(ref, teacher_views.to(device), reused, targets)


def _write(
    folder: Path,
    key: str,
    views: TeacherViews,
    labels: object,
    ref: TeacherRef,
    recipe: Mapping[str, object],
) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        v = views.views
        tensors = {
            "boxes": v.boxes.cpu().contiguous(),
            "flips": v.flips.cpu().to(torch.uint8).contiguous(),
            "jitter": v.jitter.cpu().contiguous(),
            "logits": views.logits.cpu().contiguous(),
            "labels": torch.as_tensor(labels).contiguous(),
        }
        save_file(tensors, str(tmp / FILE))
        meta = {"key": key, "teacher": asdict(ref), "recipe": recipe}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(folder: Path, key: str) -> tuple[TeacherViews, torch.Tensor] | None:
    """The stored views and labels when complete and made for `key`, else None."""
    try:
        if json.loads((folder / META).read_text()).get("key") != key:
            return None
        t = load_file(str(folder / FILE))
        views = Views(t["boxes"], t["flips"].bool(), t["jitter"])
        return TeacherViews(views, t["logits"]), t["labels"]
    except (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError):
        return None
