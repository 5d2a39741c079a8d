"""Training: the CLI writes a usable run; small CNNs learn the demo data; runs repeat exactly."""

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.config import DataConfig, RunConfig, TrainConfig
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.data.augment import Augment
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.search.spec import apply_overrides, load_spec
from carbrand_search.training.fit import FitResult, balanced_weights, fit, make_mixup, val_metrics
from carbrand_search.training.optim import WARMUP_START, LRSchedule, lr_factor, make_optimizer
from carbrand_search.training.parts import (
    TrainingData,
    build_model,
    load_training_data,
    new_model,
)

runner = CliRunner()
SMALL = [
    "data.cache_size=64",
    "data.image_size=56",
    "model.batch_norm=true",
    "train.batch_size=16",
]


def train_config(config: RunConfig, data: TrainingData) -> tuple[torch.nn.Module, FitResult]:
    """A seeded model for `config`, fitted on `data`."""
    model = new_model(config, len(data.tree.classes))
    return model, fit(model, data, config)


def small_config(*overrides: str) -> RunConfig:
    spec = load_spec("cnn-hpo")
    return apply_overrides(spec.resolve(spec.defaults()), [*SMALL, *overrides])


def test_train_cli_writes_checkpoint_config_and_metrics(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [a for s in [*SMALL, "train.epochs=2"] for a in ("--set", s)]
    result = runner.invoke(
        app, ["train", "cnn-hpo", "--data", str(demo_root), "--out", str(out), *sets]
    )
    assert result.exit_code == 0, result.output
    assert "epoch  2/2" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["history"]] == [1, 2]
    assert metrics["best"] == metrics["history"][metrics["best_epoch"] - 1]
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["train"]["epochs"] == 2
    assert saved["classes"][0] == "Astra Motors"
    config = small_config("train.epochs=2")
    model = build_model(config, len(saved["classes"]))
    model.load_state_dict(load_file(str(out / "model.safetensors")))  # strict: every key matches
    assert (out / "study.toml").read_text() == load_spec("cnn-hpo").text


def test_train_cli_refuses_non_empty_out_and_bad_override(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["train", "cnn-hpo", "--data", str(demo_root), "--out", str(out)])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert (out / "keep.txt").read_text() == "precious"
    bad = runner.invoke(
        app, ["train", "cnn-hpo", "--data", str(demo_root), "--set", "train.lr=fast"]
    )
    assert bad.exit_code == 2
    assert "train.lr: expected a number, got 'fast'" in bad.output


def test_train_cli_bad_data_folder(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "cnn-hpo", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "data folder" in result.output and "does not exist" in result.output


@pytest.mark.slow
def test_small_cnn_learns_demo_data(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=8")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    _, result = train_config(config, data)
    chance = 1 / len(data.tree.classes)
    assert result.best.val_accuracy >= 3 * chance
    assert result.best.top_class_share < 0.5  # no collapse onto one brand
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_training_repeats_exactly_on_cpu(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=2")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    first = train_config(config, data)[1].history
    second = train_config(config, data)[1].history
    strip = [replace(m, seconds=0.0) for m in first], [replace(m, seconds=0.0) for m in second]
    assert strip[0] == strip[1]


EXPECTED_OPTIMIZER = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop"}


@pytest.mark.parametrize(
    ("optimizer", "scheduler"),
    [("adamw", "plateau"), ("adam", "cosine"), ("sgd", "onecycle"), ("rmsprop", "none")],
)
def test_optimizers_and_schedulers_train_with_warmup(
    demo_root: Path, tmp_path: Path, optimizer: str, scheduler: str
) -> None:
    config = small_config(
        "train.epochs=3",
        "train.warmup_epochs=1",
        f"train.optimizer={optimizer}",
        f"train.scheduler={scheduler}",
        "train.lr=0.001",
        "train.nesterov=true",
    )
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    initial = build_model(config, len(data.tree.classes)).state_dict()
    model, result = train_config(config, data)
    built = make_optimizer(model, config.train)
    assert type(built).__name__ == EXPECTED_OPTIMIZER[optimizer]
    # Weight decay on weights of rank >= 2 only (timm's factory groups the parameters).
    for group in built.param_groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] > 0) for p in group["params"])
    assert len(result.history) == 3 and all(math.isfinite(m.train_loss) for m in result.history)
    # Warm-up (epoch 1) climbs to the base rate, which no scheduler exceeds; the weights moved.
    assert max(m.lr for m in result.history) <= 0.001 + 1e-12
    assert result.history[0].lr == pytest.approx(
        0.001, rel=0.01
    )  # one-cycle: a step past its peak
    trained = model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


@pytest.mark.parametrize("scheduler", ["plateau", "cosine", "onecycle", "none"])
def test_warmup_raises_the_lr_to_the_base_rate(scheduler: str) -> None:
    """As timm's TestWarmup: the LR climbs at every step of the warm-up and reaches the base
    rate at its end; after it, cosine and one-cycle decay, plateau and none hold."""
    base, steps = 0.01, 10
    cfg = TrainConfig(epochs=3, warmup_epochs=1, scheduler=scheduler, lr=base)  # type: ignore[arg-type]
    model = torch.nn.Linear(4, 2)
    optimizer = make_optimizer(model, cfg)
    schedule = LRSchedule.create(optimizer, cfg, steps_per_epoch=steps)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(3 * steps - 1):
        optimizer.step()
        schedule.after_batch()
        lrs.append(optimizer.param_groups[0]["lr"])
    warmup = lrs[: steps - 1]
    assert warmup[0] < base / 10
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert max(lrs[: steps + 1]) == pytest.approx(base)
    if scheduler in ("cosine", "onecycle"):
        assert lrs[-1] < base / 2
    else:
        assert lrs[steps:] == pytest.approx([base] * (2 * steps))


def test_warmup_and_cosine_are_one_pure_function_of_the_step() -> None:
    """1% of the base rate at step 0, linear to the base rate at the warm-up's end, then half a
    cosine to 0 at the last step; without cosine it holds the base rate."""
    assert lr_factor(0, 10, 30, cosine=True) == pytest.approx(WARMUP_START)
    assert lr_factor(5, 10, 30, cosine=True) == pytest.approx(
        WARMUP_START + (1 - WARMUP_START) / 2
    )
    assert lr_factor(10, 10, 30, cosine=True) == 1.0
    assert lr_factor(20, 10, 30, cosine=True) == pytest.approx(0.5)
    assert lr_factor(30, 10, 30, cosine=True) == pytest.approx(0.0)
    assert lr_factor(25, 10, 30, cosine=False) == 1.0
    assert lr_factor(0, 0, 30, cosine=True) == 1.0  # no warm-up: the cosine starts at the top


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "plateau"])
def test_a_schedule_restored_from_its_state_goes_on_as_the_original(scheduler: str) -> None:
    cfg = TrainConfig(epochs=3, warmup_epochs=1, scheduler=scheduler, lr=0.01)  # type: ignore[arg-type]

    def built() -> tuple[torch.optim.Optimizer, LRSchedule]:
        optimizer = make_optimizer(torch.nn.Linear(4, 2), cfg)
        return optimizer, LRSchedule.create(optimizer, cfg, steps_per_epoch=10)

    (first, original), (second, restored) = built(), built()
    for _ in range(13):
        first.step()
        original.after_batch()
    original.after_epoch(0.5)
    restored.load_state_dict(original.state_dict())
    second.load_state_dict(first.state_dict())
    lrs: tuple[list[float], list[float]] = ([], [])
    for _ in range(10):
        for optimizer, schedule, out in ((first, original, lrs[0]), (second, restored, lrs[1])):
            optimizer.step()
            schedule.after_batch()
            out.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == lrs[1]
    if scheduler != "plateau":  # plateau holds the rate between epochs
        assert len(set(lrs[0])) == len(lrs[0])


@pytest.mark.slow
def test_torch_compile_trains_like_the_plain_model(demo_root: Path, tmp_path: Path) -> None:
    # 18 divides the 252 training and 54 val photos: a last, smaller batch would compile again.
    plain = small_config("train.epochs=1", "model.filters=[8, 16]", "train.batch_size=18")
    compiled = replace(plain, train=replace(plain.train, compile=True))
    data = load_training_data(demo_root, plain.data, tmp_path / "cache", torch.device("cpu"))
    _, expected = train_config(plain, data)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, result = train_config(compiled, data)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    # Fused kernels round differently, so an epoch ends close to the plain run, not equal.
    assert result.history[0].train_loss == pytest.approx(expected.history[0].train_loss, rel=0.02)
    # The weights are saved from the plain module, so they load without torch.compile.
    assert set(result.best_state) == set(expected.best_state)


def test_freeze_epochs_train_only_the_head(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=2", "train.freeze_epochs=1")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshot:
        def __init__(self, model: torch.nn.Module):
            self.model = model

        def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
            if epoch == 1:
                self.epoch_end(None)

        def batch_end(self, loss: torch.Tensor) -> None: ...

        def epoch_end(self, metrics: EpochMetrics | None) -> None:
            snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})

    model = build_model(config, len(data.tree.classes))
    fit(model, data, config, Snapshot(model))
    before, after_frozen, after_unfrozen = snapshots
    conv, head = "features.0.conv.weight", "head.5.weight"
    assert torch.equal(before[conv], after_frozen[conv])
    assert not torch.equal(before[head], after_frozen[head])
    assert not torch.equal(after_frozen[conv], after_unfrozen[conv])


def test_train_loss_is_the_mean_of_batch_losses(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=1", "model.filters=[8, 16]")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    losses: list[torch.Tensor] = []

    class Record:
        def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

        def batch_end(self, loss: torch.Tensor) -> None:
            assert loss.dim() == 0 and not loss.requires_grad
            losses.append(loss.clone())

        def epoch_end(self, metrics: EpochMetrics) -> None: ...

    model = build_model(config, len(data.tree.classes))
    result = fit(model, data, config, Record())
    sizes = [len(b[1]) for b in data.train.batches(config.train.batch_size) if len(b[1]) > 1]
    assert len(losses) == len(sizes) > 1
    expected = sum(float(loss) * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes)
    assert result.history[0].train_loss == pytest.approx(expected, rel=1e-5)


def test_collapse_signals() -> None:
    labels = torch.tensor([0, 1, 2, 3] * 5)
    uniform = val_metrics(torch.zeros(20, 4), labels, 4)
    assert uniform["loss_ratio"] == pytest.approx(1.0)
    assert uniform["top_class_share"] == 1.0  # argmax of ties: every prediction is class 0
    perfect = val_metrics(torch.nn.functional.one_hot(labels, 4).float() * 10, labels, 4)
    assert perfect["val_accuracy"] == 1.0 and perfect["val_macro_f1"] == 1.0
    assert perfect["top_class_share"] == 0.25 and perfect["loss_ratio"] < 0.01


@pytest.mark.parametrize("crop", ["random", "resized"])
def test_augment_shapes_dtypes_ranges(crop: str) -> None:
    aug = Augment(DataConfig(cache_size=40, image_size=32, crop=crop), (0.5,) * 3, (0.5,) * 3)
    images = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    train = aug.train_batch(images, g)
    evaluated = aug.eval_batch(images)
    for x in (train, evaluated):
        assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_random_crop_copies_pixels_exactly() -> None:
    data = DataConfig(cache_size=40, image_size=32, crop="random", hflip=False, color_jitter=0.0)
    aug = Augment(data, (0.0,) * 3, (1.0,) * 3)
    images = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    out = (aug.train_batch(images, torch.Generator().manual_seed(3)) * 255).round().to(torch.uint8)
    source = images.permute(0, 3, 1, 2)
    for i in range(4):
        windows = [source[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop"])
def test_no_weight_decay_on_one_dimensional_parameters(optimizer: str) -> None:
    config = small_config(f"train.optimizer={optimizer!r}", "train.weight_decay=0.05")
    model = build_model(config, 5)
    decay = {id(p): g["weight_decay"] for g in make_optimizer(model, config.train).param_groups
             for p in g["params"]}  # fmt: skip
    assert len(decay) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        # BatchNorm scales and shifts and every bias are 1-D: never decayed.
        assert decay[id(p)] == (0.0 if p.ndim <= 1 else 0.05), name


def test_frozen_batchnorm_keeps_its_running_statistics(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=2", "train.freeze_epochs=1")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    model = build_model(config, len(data.tree.classes))
    stats: list[torch.Tensor] = []

    class Stats:
        def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
            if epoch == 1:
                stats.append(model.features[0].norm.running_mean.clone())

        def batch_end(self, loss: torch.Tensor) -> None: ...

        def epoch_end(self, metrics: EpochMetrics) -> None:
            stats.append(model.features[0].norm.running_mean.clone())

    fit(model, data, config, Stats())
    before, after_frozen, after_unfrozen = stats
    assert torch.equal(before, after_frozen)  # eval mode while frozen
    assert not torch.equal(after_frozen, after_unfrozen)  # train mode again after


def test_mixup_and_cutmix_give_soft_targets_of_the_batch_shape() -> None:
    images = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for alphas in (("0.4", "0"), ("0", "1.0"), ("0.4", "1.0")):
        cfg = small_config(f"train.mixup_alpha={alphas[0]}", f"train.cutmix_alpha={alphas[1]}")
        mixup = make_mixup(cfg.train, 5)
        assert mixup is not None
        x, targets = mixup(images.clone(), labels)
        assert x.shape == images.shape and targets.shape == (6, 5)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        # Each sample keeps weight on its own label and gives the rest to its partner's.
        own = targets[torch.arange(6), labels]
        assert (own >= 0.5 - 1e-6).all() or (own <= 0.5 + 1e-6).all()
        assert not torch.equal(targets, torch.nn.functional.one_hot(labels, 5).float())
    assert make_mixup(small_config().train, 5) is None


def test_mixup_trains_on_an_odd_sized_split(demo_root: Path, tmp_path: Path) -> None:
    config = small_config("train.epochs=1", "train.mixup_alpha=0.2", "train.batch_size=13")
    data = load_training_data(demo_root, config.data, tmp_path / "cache", torch.device("cpu"))
    assert len(data.train) % 13 % 2 == 1  # the last batch is odd: Mixup needs pairs
    _, result = train_config(config, data)
    assert math.isfinite(result.history[0].train_loss)


def test_balanced_sampling_draws_every_class_equally() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    split = DeviceSplit(torch.zeros(100, 4, 4, 3, dtype=torch.uint8), labels, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    weights = balanced_weights(labels, 2)
    drawn = torch.cat([y for _ in range(20) for _, y in split.batches(25, generator, weights)])
    assert len(drawn) == 20 * 100  # an epoch is still one pass worth of samples
    assert 0.4 < drawn.float().mean().item() < 0.6  # class 1 is 10% of the split, ~50% drawn
    plain = torch.cat([y for _, y in split.batches(25, generator)])
    assert plain.float().mean().item() == pytest.approx(0.1)
