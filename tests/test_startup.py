"""What a command and a worker load before they do anything: each pays only for what it needs
(timm brings torchvision and torch._dynamo; scikit-learn and matplotlib are loaded where used)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Done, write_study

HEAVY = ("torch", "timm", "torchvision", "torch._dynamo", "sklearn", "matplotlib")


def loaded_by(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has loaded after running `code`."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def until_training(study: Path, data: Path, cache: Path) -> str:
    """What a worker does before its first training step: its module, the study, the data, the
    model and one augmented batch."""
    return f"""
from pathlib import Path
import torch
import carbrand_search.search.worker
from carbrand_search.search.spec import load_spec
from carbrand_search.training.parts import augment_for, load_training_data, new_model
config = load_spec({str(study)!r}).base
data = load_training_data(Path({str(data)!r}), config.data, Path({str(cache)!r}), torch.device("cpu"))
new_model(config, len(data.tree.classes))
images = data.train.images[:4]
augment_for(config).train_batch(images, torch.Generator().manual_seed(0))
"""


@pytest.mark.slow
def test_a_small_cnn_worker_starts_without_timm_torchvision_or_sklearn(
    demo_root: Path, tmp_path: Path
) -> None:
    study = write_study(tmp_path)  # small_cnn, random crops
    loaded = loaded_by(until_training(study, demo_root, tmp_path / "cache"))
    assert loaded == {"torch"}


@pytest.mark.slow
def test_a_timm_family_loads_timm_when_its_model_is_built(demo_root: Path, tmp_path: Path) -> None:
    study = write_study(tmp_path)
    study.write_text(
        study.read_text().replace('name = "small_cnn"', 'name = "resnet"')
        .replace("filters = [8, 16]\ndense_units = 32\nbatch_norm = true\n", "")
        .replace("[space.model.dropout]", "[space.model.drop_rate]")
    )  # fmt: skip
    loaded = loaded_by(until_training(study, demo_root, tmp_path / "cache"))
    assert {"timm", "torchvision"} <= loaded


@pytest.mark.slow
def test_resized_crops_load_torchvision_only_when_used(demo_root: Path, tmp_path: Path) -> None:
    study = write_study(tmp_path)
    study.write_text(
        study.read_text().replace("image_size = 28\n", 'image_size = 28\ncrop = "resized"\n')
    )
    loaded = loaded_by(until_training(study, demo_root, tmp_path / "cache"))
    assert "torchvision" in loaded and "timm" not in loaded


def test_read_only_commands_import_no_torch(done: Done) -> None:
    for args in (
        ["--help"],
        ["studies", "--storage", done.url],
        ["status", "tiny", *done.store_args()],
    ):
        code = f"""
from carbrand_search.cli import app
try:
    app({args!r})
except SystemExit as e:
    assert e.code in (0, None), e.code
"""
        assert loaded_by(code) == set(), args
