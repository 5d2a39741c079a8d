"""What a resume point costs: the size of a trial's saved training state and the seconds to
serialise it and write it to a local artifact store, per model, against one training step.

    python bench/resume.py [--models small_cnn efficientnet_b0] [--size 224] [--batch 32]
                           [--repeats 5] [--quick] [--out bench/results/resume.json]

The state is taken after two optimisation steps (AdamW holds its two moments by then), so its size
is what every epoch's save writes. CPU only here; on a GPU the copy of weights to the host adds.
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from common import machine, write_json
from torch import nn

from carbrand_search import models
from carbrand_search.core.config import TrainConfig
from carbrand_search.search.resume import ResumeSaver
from carbrand_search.search.storage import artifact_store
from carbrand_search.training.optim import LRSchedule, make_optimizer
from carbrand_search.training.state import FitState, capture_rng

CLASSES = 30


class _Trial:
    """Stands in for an Optuna trial: the saver records its point here."""

    number = 0

    def set_user_attr(self, key: str, value: object) -> None:
        pass


def state_after_steps(name: str, size: int, batch: int) -> tuple[FitState, float]:
    """The FitState `fit` would save after two AdamW steps of `name`, and the second's seconds."""
    # Random weights: the state's size does not depend on them, and nothing is downloaded.
    fields = {f.name for f in dataclasses.fields(models.entry(name).params)}
    offline = {"pretrained": False} if "pretrained" in fields else {}
    model = models.create(name, CLASSES, **offline)
    cfg = TrainConfig(optimizer="adamw", scheduler="cosine", epochs=10)
    optimizer = make_optimizer(model, cfg)
    schedule = LRSchedule.create(optimizer, cfg, steps_per_epoch=100)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, CLASSES, (batch,))
    for _ in range(2):  # the second step is timed: the first pays for allocations
        start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        step_s = time.perf_counter() - start
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = FitState(
        epoch=1, batch=0, model=weights, optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(), rng=capture_rng(torch.Generator().manual_seed(1)),
        shuffle=torch.Generator().get_state(), epoch_loss=0.0, epoch_seen=0,
        epoch_seconds=0.0, history=(), best_epoch=1, best_value=0.0, best_state=weights,
    )  # fmt: skip
    return state, step_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "efficientnet_b0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/resume.json"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.batch, args.repeats = ["small_cnn"], 32, 4, 2
    rows = []
    print(f"{'model':>16} {'MB':>8} {'save s':>8} {'step s':>8}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        saver = ResumeSaver(artifact_store(tmp), _Trial(), every_s=300)  # type: ignore[arg-type]
        for name in args.models:
            state, step_s = state_after_steps(name, args.size, args.batch)
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                saver(state)  # serialise, write, record, remove the previous point
                seconds.append(time.perf_counter() - start)
            megabytes = sum(p.stat().st_size for p in Path(tmp).glob("resume-*")) / 1e6
            row = {
                "model": name,
                "state_mb": round(megabytes, 2),
                "save_s_median": round(statistics.median(seconds), 4),
                "train_step_s": round(step_s, 4),
            }
            rows.append(row)
            print(
                f"{name:>16} {row['state_mb']:>8} {row['save_s_median']:>8} "
                f"{row['train_step_s']:>8}",
                flush=True,
            )
    write_json(
        args.out,
        {
            "machine": machine(),
            "date": str(date.today()),
            "args": vars(args) | {"out": str(args.out)},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
