"""A few epochs on a small subset of real car photos (../shared/datasets), when present."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from safetensors.torch import load_file
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.search.spec import apply_overrides, load_spec
from carbrand_search.training.fit import predict
from carbrand_search.training.parts import (
    augment_for,
    build_model,
    load_training_data,
    precision_for,
)

runner = CliRunner()
PHOTOS = SHARED / "datasets" / "stanford-cars-brands-128"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0_timm.safetensors"
MAKES = ("Aston Martin", "Audi", "BMW", "Chevrolet", "Mercedes-Benz")
pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason="shared real photos not present")


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 makes (names with spaces and hyphens), 30 photos each, split by `data split`."""
    root = tmp_path_factory.mktemp("real")
    for make in MAKES:
        (root / "flat" / make).mkdir(parents=True)
        for photo in sorted((PHOTOS / make).iterdir())[:30]:
            shutil.copy(photo, root / "flat" / make / photo.name)
    result = runner.invoke(app, ["data", "split", str(root / "flat"), str(root / "cars")])
    assert result.exit_code == 0, result.output
    return root / "cars"


def _sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def test_real_subset_passes_check(real_subset: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(real_subset)])
    assert result.exit_code == 0, result.output
    assert "Mercedes-Benz" in result.output and "Aston Martin" in result.output


def test_small_cnn_trains_on_real_photos(real_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "cnn-bn-hpo", "--data", str(real_subset), "--out", str(out)]
    values = ("data.cache_size=64", "data.image_size=56", "train.epochs=2", "train.batch_size=16")
    result = runner.invoke(app, args + _sets(*values))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    spec = load_spec("cnn-bn-hpo")
    config = apply_overrides(spec.resolve(spec.defaults()), values)
    assert saved == {"config": json.loads(json.dumps(config.to_dict())), "classes": sorted(MAKES)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    # The saved weights are the best epoch's: they score its validation accuracy again.
    data = load_training_data(real_subset, config.data, tmp_path / "cache", torch.device("cpu"))
    model = build_model(config, len(MAKES))
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    logits, labels = predict(
        model, data.val, augment_for(config), 64, precision_for(config, data.val.device)
    )
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(metrics["best"]["val_accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not LITE0.is_file(), reason="shared ImageNet weights not present")
def test_pretrained_lite0_fine_tunes_on_real_photos(real_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "effnet-b0", "--data", str(real_subset), "--out", str(out)]
    sets = _sets(
        "model.name=tf_efficientnet_lite0",
        f"model.weights={LITE0}",
        "data.cache_size=128",
        "data.image_size=112",
        "train.epochs=4",
        "train.freeze_epochs=1",
        "train.lr=0.001",
        "train.batch_size=10",
    )
    result = runner.invoke(app, args + sets)
    assert result.exit_code == 0, result.output
    best = json.loads((out / "metrics.json").read_text())["best"]
    # 80 training photos and ~30 steps: ImageNet features already beat 5-way chance (0.2).
    assert best["val_accuracy"] >= 0.3
    assert best["loss_ratio"] < 0.97
