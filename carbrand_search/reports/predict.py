"""Predict brands for image files with a stored trial's model; Grad-CAM per image on request."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial
from PIL import Image

from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import BadImage, load_image, square_array
from carbrand_search.reports.gradcam import overlays
from carbrand_search.reports.report import ranked_trials
from carbrand_search.search.study import trials
from carbrand_search.search.trained import TrialModel
from carbrand_search.training.parts import augment_for


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial `number` of `study`, or its best complete trial when None."""
    if number is None:
        return ranked_trials(study)[0]
    by_number = {t.number: t for t in trials(study)}
    if number not in by_number:
        raise UserError(f"--trial {number}: no such trial in '{study.study_name}'")
    return by_number[number]


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (brand, probability), most likely first
    cam: Path | None = None


def predict_files(
    tm: TrialModel, paths: list[Path], top_k: int, cam_dir: Path | None
) -> tuple[list[Prediction], list[BadImage]]:
    """Top-k brands per readable image; unreadable files come back as errors, not exceptions."""
    arrays, kept, bad = [], [], []
    for path in paths:
        try:
            arrays.append(
                square_array(load_image(path), tm.config.data.cache_size, tm.config.data.fit)
            )
            kept.append(path)
        except BadImage as e:
            bad.append(e)
    if not kept:
        return [], bad
    images = np.stack(arrays)
    with torch.no_grad():
        probs = tm.model(augment_for(tm.config).eval_batch(torch.from_numpy(images))).softmax(1)
    k = min(top_k, len(tm.classes))
    values, indices = probs.topk(k, dim=1)
    cams: list[Path | None] = [None] * len(kept)
    if cam_dir is not None:
        cam_dir.mkdir(parents=True, exist_ok=True)
        pictures = overlays(
            tm.model, tm.config.model.name, augment_for(tm.config), images, indices[:, 0].tolist()
        )
        for i, (path, picture) in enumerate(zip(kept, pictures, strict=True)):
            target = cam_dir / f"{i:03d}-{path.stem}-cam.png"
            Image.fromarray(picture).save(target)
            cams[i] = target
    predictions = [
        Prediction(path, [(tm.classes[j], float(p)) for p, j in zip(v, ix, strict=True)], cam)
        for path, v, ix, cam in zip(kept, values.tolist(), indices.tolist(), cams, strict=True)
    ]
    return predictions, bad
