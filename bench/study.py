"""Trials per hour of a fixed small study on demo data with 1, 2, 4 … workers.

    python bench/study.py [--workers 1 2 4] [--trials 8] [--quick] [--out bench/results/study.json]

Each worker count gets a fresh SQLite study (same sampler seed) after a warm-up run that builds
the decoded-image cache, so every timed run starts from a warm cache.
"""

import argparse
import tempfile
from datetime import date
from pathlib import Path

from common import demo_data, machine, study_file, timed_run, warm_cache, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="cached image side (px)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/study.json"))
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials, args.epochs, args.size = [1], 2, 1, 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = demo_data(root / "demo", classes=8, per_class=60, size=args.size)
        study = study_file(root, "bench", args.trials, args.epochs, (0.01, 0.1), False, args.size)
        cache = root / "cache"
        warm_cache(study, data, cache)
        rows = []
        for workers in args.workers:
            run_dir = root / f"w{workers}"
            run_dir.mkdir()
            rows.append(timed_run(study, data, run_dir / "study.db", workers, cache))
    base = rows[0]["trials_per_hour"]
    print(f"{'workers':>8} {'seconds':>8} {'trials':>7} {'trials/h':>9} {'vs first':>9}")
    for row in rows:
        row["ratio_vs_first"] = round(row["trials_per_hour"] / base, 3)
        print(
            f"{row['workers']:>8} {row['seconds']:>8} {row['trials']:>7} "
            f"{row['trials_per_hour']:>9} {row['ratio_vs_first']:>9}"
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
