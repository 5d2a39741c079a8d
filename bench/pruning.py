"""Epochs saved by collapse (+ Optuna's) pruning on a study where about half the trials collapse.

    python bench/pruning.py [--trials 12] [--epochs 8] [--optuna hyperband] [--quick]
                            [--out bench/results/pruning.json]

The same random-sampled study (the seed's plain CNN without BatchNorm, AdamW, lr log-uniform
over a range whose upper part collapses onto one class) runs twice on demo data: with no
pruning at all, and with the collapse rules plus `--optuna` (none, median, successive_halving
or hyperband). The random sampler draws the same parameters in both, so the difference in
epochs run is what pruning saved. A warm-up builds the image cache first, so neither run pays
for it.
"""

import argparse
import tempfile
from datetime import date
from pathlib import Path

from common import demo_data, machine, study_file, timed_run, warm_cache, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, nargs=2, default=(1e-4, 0.1))
    parser.add_argument("--warmup", type=int, default=2, help="pruner warm-up epochs")
    parser.add_argument(
        "--optuna",
        choices=["none", "median", "successive_halving", "hyperband"],
        default="none",
        help="Optuna pruner after the collapse rules in the pruned run",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pruning.json"))
    args = parser.parse_args()
    classes, per_class, size = 8, 60, 64
    if args.quick:
        args.trials, args.epochs = 2, 3
        classes, per_class, size = 4, 20, 32
    lr = (args.lr[0], args.lr[1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = demo_data(root / "demo", classes=classes, per_class=per_class, size=size)
        rows = {}
        for collapse in (False, True):
            folder = root / f"collapse-{collapse}"
            folder.mkdir()
            study = study_file(
                folder,
                "prune",
                args.trials,
                args.epochs,
                lr,
                collapse,
                size,
                "adamw",
                False,
                args.warmup,
                optuna_pruner=args.optuna if collapse else "none",
            )
            warm_cache(study, data, root / "cache")
            name = "with_pruning" if collapse else "without_pruning"
            rows[name] = timed_run(study, data, folder / "study.db", 1, root / "cache")
    saved = 1 - rows["with_pruning"]["epochs_run"] / rows["without_pruning"]["epochs_run"]
    time_saved = 1 - rows["with_pruning"]["seconds"] / rows["without_pruning"]["seconds"]
    for name, row in rows.items():
        print(
            f"{name:>16}: {row['epochs_run']} epochs, {row['pruned']} pruned, "
            f"{row['seconds']}s, best {row['best']}"
        )
    print(
        f"epochs saved by collapse + {args.optuna} pruning: {saved:.1%} "
        f"(wall time saved {time_saved:.1%})"
    )
    pruned = set(rows["with_pruning"]["pruned_trials"])
    collapsed_anyway = set(rows["without_pruning"]["collapsed_at_end"])
    print(
        f"pruned trials {sorted(pruned)}; trials still collapsed after all "
        f"{args.epochs} epochs without pruning {sorted(collapsed_anyway)}; "
        f"pruned but healthy at the end: {sorted(pruned - collapsed_anyway)}"
    )
    payload = {"machine": machine(), "date": str(date.today()), "epochs_saved": round(saved, 4)}
    payload |= {"time_saved": round(time_saved, 4), "rows": rows}
    write_json(args.out, payload | {"args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
