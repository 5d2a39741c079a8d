"""bf16 autocast and channels_last on the CPU: training and inference images/s per model and
resolution, and whether a real training curve stays the same. On a CPU without native bf16 only
float32 and channels_last are timed unless --emulated-bf16 asks (emulated bf16 is 10-14x slower).

    python bench/cpu_precision.py [--rows resnet@64 resnet@112 tf_efficientnet_lite0@224 …]
                                  [--steps 6] [--rounds 3] [--curve-epochs 8] [--curve-px 112]
                                  [--emulated-bf16] [--quick] [--out FILE.json]

Speed: for each row, the four precisions (float32, channels_last, bf16, bf16 + channels_last)
train with the trainer's own `train_step` on batches of 32 (inference rows: `predict`'s forward
under no_grad, batches of 64), in alternating rounds; best round per precision. Curve: the
`cars-scratch` default ResNet trained by the real `fit` on the crops split (../data/cars-crops,
or --curve-data) in float32 and in the trainer's default (bf16 + channels_last where bf16 is
native, channels_last elsewhere), same seed, epoch by epoch.
"""

import argparse
import time
from datetime import date
from pathlib import Path

import torch
from common import machine, write_json

from carbrand_search import models
from carbrand_search.core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from carbrand_search.models.params import ResNetParams
from carbrand_search.training.fit import fit, train_step
from carbrand_search.training.parts import load_training_data, new_model, precision_for
from carbrand_search.training.precision import Precision, native_bf16

PRECISIONS = {
    "fp32": Precision(),
    "channels_last": Precision(channels_last=True),
    "bf16": Precision(bf16=True),
    "bf16+channels_last": Precision(bf16=True, channels_last=True),
}
# The cars-scratch default: ResNet-10, 32→256, stride-2 stem without max-pool.
RESNET = ResNetParams(layers=(1, 1, 1, 1), stem_stride=2)
CURVE_DATA = Path(__file__).resolve().parents[2] / "data" / "cars-crops"
CLASSES = 30


def build(name: str) -> torch.nn.Module:
    if name == "resnet":
        return models.create("resnet", CLASSES, **RESNET.__dict__)
    if name == "small_cnn":
        return models.create("small_cnn", CLASSES, batch_norm=True)
    return models.create(name, CLASSES, pretrained=False)


def images_per_s(row: str, precision: Precision, steps: int, infer: bool) -> float:
    name, px = row.split("@")
    torch.manual_seed(0)
    model = precision.prepare(build(name))
    batch = 64 if infer else 32
    x = torch.randn(batch, 3, int(px), int(px))
    y = torch.randint(0, CLASSES, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        if infer:
            model.eval()
            with torch.no_grad(), precision.autocast(x.device):
                model(precision.input(x))
        else:
            model.train()
            train_step(model, criterion, optimizer, x, y, precision)

    step()  # warm-up: oneDNN picks and caches its kernels on the first call
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def speed_rows(
    rows: list[str], steps: int, rounds: int, precisions: dict[str, Precision]
) -> list[dict]:
    """Best images/s per precision; speed-up is the last precision's over float32."""
    out = []
    for row in rows:
        infer = row.startswith("infer:")
        spec = row.removeprefix("infer:")
        best = dict.fromkeys(precisions, 0.0)
        for _ in range(rounds):
            for label, precision in precisions.items():
                best[label] = max(best[label], images_per_s(spec, precision, steps, infer))
        result = {"row": row, **{k: round(v, 1) for k, v in best.items()}}
        result["speed-up"] = round(best[list(precisions)[-1]] / best["fp32"], 2)
        print(result, flush=True)
        out.append(result)
    return out


def curve(data: Path, px: int, epochs: int, defaults: bool) -> dict:
    """The real trainer on real crops: per-epoch training loss, val macro-F1 and seconds, in
    float32 or (`defaults`) with train.amp and train.channels_last on."""
    config = RunConfig(
        data=DataConfig(cache_size=px + px // 8, fit="pad", image_size=px, min_scale=0.35),
        model=ModelConfig("resnet", RESNET),
        train=TrainConfig(
            epochs=epochs,
            lr=2e-3,
            weight_decay=0.05,
            label_smoothing=0.1,
            scheduler="onecycle",
            sampling="balanced",
            amp=defaults,
            channels_last=defaults,
        ),
    )
    used = precision_for(config, torch.device("cpu"))
    label = next(k for k, p in PRECISIONS.items() if p == used)
    cache = Path.home() / ".cache" / "carbrand-search"
    training = load_training_data(data, config.data, cache, torch.device("cpu"))
    model = new_model(config, len(training.tree.classes))
    start = time.perf_counter()
    result = fit(model, training, config)
    history = [
        {
            "epoch": m.epoch,
            "train_loss": round(m.train_loss, 4),
            "val_macro_f1": round(m.val_macro_f1, 4),
            "seconds": round(m.seconds, 1),
        }
        for m in result.history
    ]
    for line in history:
        print(label, line, flush=True)
    return {
        "bf16": used.bf16,
        "channels_last": used.channels_last,
        "seconds": round(time.perf_counter() - start, 1),
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        default=[
            "resnet@64", "resnet@96", "resnet@112", "resnet@128", "small_cnn@112",
            "tf_efficientnet_lite0@224", "infer:tf_efficientnet_lite0@224",
        ],
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--curve-epochs", type=int, default=8)
    parser.add_argument("--curve-px", type=int, default=112)
    parser.add_argument("--curve-data", type=Path, default=CURVE_DATA)
    parser.add_argument("--quick", action="store_true", help="one tiny row, one round, no curve")
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="time the bf16 rows on a CPU without native bf16 too (10-14x slower than float32)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    native = native_bf16(torch.device("cpu"))
    timed = native or args.emulated_bf16
    precisions = {k: p for k, p in PRECISIONS.items() if timed or not p.bf16}
    if args.quick:
        args = replace_args(args, rows=["resnet@32", "infer:resnet@32"], steps=1, rounds=1)
    result: dict = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "bf16_native": native,
        "threads": torch.get_num_threads(),
        "speed": speed_rows(args.rows, args.steps, args.rounds, precisions),
    }
    if not args.quick and args.curve_data.is_dir():
        result["curve"] = [
            curve(args.curve_data, args.curve_px, args.curve_epochs, defaults)
            for defaults in (False, True)
        ]
    if args.out:
        write_json(args.out, result)


def replace_args(args: argparse.Namespace, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    main()
