"""Trials per hour of a fixed small study on demo data with 1, 2, 4 … workers (on CUDA: K workers
packed on one GPU, with each trial's device and peak GPU memory), optionally with
`train.compile = true` beside it.

    python bench/study.py [--workers 1 2 4] [--per-gpu 1 2 4] [--model small_cnn|efficientnet_b0]
                          [--trials 8] [--epochs 4] [--size 64] [--per-class 60] [--compile]
                          [--quick] [--out bench/results/study.json]

Each configuration gets a fresh SQLite study (same sampler seed) after a warm-up that builds the
decoded-image cache, so every timed run starts from a warm cache. `train_img_s` counts training
images only (epochs run × train split ÷ wall time), so it is a lower bound on training speed: the
wall time also holds worker start-up and validation.
"""

import argparse
import tempfile
from datetime import date
from pathlib import Path

import torch
from common import demo_data, machine, study_file, timed_run, warm_cache, write_json

from carbrand_search.data.imagefolder import scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CPU runs")
    parser.add_argument(
        "--per-gpu", type=int, nargs="+", default=[1, 2, 4], help="CUDA runs: K workers, 1 GPU"
    )
    parser.add_argument("--model", choices=["small_cnn", "efficientnet_b0"], default="small_cnn")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="cached image side (px)")
    parser.add_argument("--per-class", type=int, default=60, help="demo images per brand")
    parser.add_argument("--compile", action="store_true", help="also time train.compile = true")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/study.json"))
    args = parser.parse_args()
    if args.quick:
        args.workers, args.per_gpu, args.trials, args.epochs, args.size = [1], [1], 2, 1, 32
    cuda = torch.cuda.is_available()
    runs = [(k, k) for k in args.per_gpu] if cuda else [(w, 1) for w in args.workers]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = demo_data(root / "demo", classes=8, per_class=args.per_class, size=args.size)
        train_images = len(scan(data).splits["train"].files)
        studies = {
            compiled: study_file(
                root,
                "bench-compiled" if compiled else "bench",
                args.trials,
                args.epochs,
                (0.01, 0.1),
                False,
                args.size,
                model=args.model,
                compile=compiled,
            )
            for compiled in ([False, True] if args.compile else [False])
        }
        cache = root / "cache"
        warm_cache(studies[False], data, cache)
        print(
            f"{'workers':>8} {'per GPU':>8} {'compile':>8} {'seconds':>8} {'trials':>7} "
            f"{'trials/h':>9} {'train img/s':>12} {'peak GiB/trial':>15}",
            flush=True,
        )
        rows = []
        for compiled, study in studies.items():
            for workers, per_gpu in runs:
                run_dir = root / f"w{workers}-{compiled}"
                run_dir.mkdir()
                row = timed_run(study, data, run_dir / "study.db", workers, cache, per_gpu)
                row["compile"] = compiled
                row["train_img_s"] = round(row["epochs_run"] * train_images / row["seconds"], 1)
                peak = max(row["peak_memory_gib"].values(), default="-")
                rows.append(row)
                print(
                    f"{workers:>8} {per_gpu if cuda else '-':>8} {compiled!s:>8} "
                    f"{row['seconds']:>8} {row['trials']:>7} {row['trials_per_hour']:>9} "
                    f"{row['train_img_s']:>12} {peak:>15}",
                    flush=True,
                )
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["ratio_vs_first"] = round(row["trials_per_hour"] / base, 3)
    print("trials/h vs the first row:", [row["ratio_vs_first"] for row in rows])
    write_json(
        args.out,
        {
            "machine": machine(),
            "device": "cuda" if cuda else "cpu",
            "date": str(date.today()),
            "args": vars(args) | {"out": str(args.out)},
            "train_images": train_images,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
