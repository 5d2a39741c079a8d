"""Shared fixtures: tiny datasets made by the tests, seeded RNGs, one torch thread."""

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carbrand_search.data.demo import DemoSpec, write_demo

os.environ["COLUMNS"] = "200"  # rich reads the width once, when the CLI module is imported

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _seeded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    monkeypatch.setenv("CARBRAND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARBRAND_STUDIES", str(REPO / "studies"))


def write_tree(
    root: Path, classes: dict[str, int], splits=("train", "val", "test"), size=24
) -> Path:
    """A tiny ImageFolder of random PNGs: `classes` maps class name → images per split."""
    rng = np.random.default_rng(0)
    for split in splits:
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tiny", {"Alfa Romeo": 3, "BMW": 3, "Citroën": 3})


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic demo dataset, small: 6 brands × 60 images at 64 px."""
    root = tmp_path_factory.mktemp("demo") / "demo-data"
    write_demo(root, DemoSpec(classes=6, per_class=60, size=64, seed=0))
    return root


@pytest.fixture
def demo_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data that a test may modify."""
    return Path(shutil.copytree(demo_root, tmp_path / "demo-data"))


def write_study(
    folder: Path,
    name: str = "tiny",
    n_trials: int = 4,
    epochs: int = 2,
    lr: str = "",
    collapse: bool = False,
) -> Path:
    """A study small enough for CPU tests: 28 px, two conv blocks, a couple of epochs."""
    lr_space = lr or "low = 1e-3\nhigh = 1e-2\nlog = true\ndefault = 3e-3"
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
[study]
n_trials = {n_trials}
[data]
cache_size = 32
image_size = 28
[model]
name = "small_cnn"
filters = [8, 16]
dense_units = 32
batch_norm = true
[train]
epochs = {epochs}
batch_size = 32
[space.train.lr]
{lr_space}
[space.model.dropout]
low = 0.0
high = 0.5
default = 0.1
[sampler]
name = "random"
[pruner]
collapse = {str(collapse).lower()}
warmup_epochs = 1
optuna = "none"
"""
    )
    return path
