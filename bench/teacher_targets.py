"""What each teacher's soft targets tell a student beyond the label: for teacher studies in one
storage, their outputs for the same fixed views of the training split (a student study file's
view recipe), summarised at each temperature by `soft_targets`: how often the top class is the
label, the mean probability on the label, and the entropy of the wrong classes over ln(C − 1)
(1: spread evenly, nothing about which makes look alike).

    python bench/teacher_targets.py TEACHER [TEACHER …] --storage URL --artifacts DIR --data ROOT
        [--study bench/studies/cars-student-long.toml] [--views 8] [--temperatures 1 4]
        [--cache-dir DIR] [--out FILE.json]

The views are computed once per teacher and kept in the decoded-image cache, as `run` keeps
them, so a student study with the same recipe and view count reuses them.
"""

import argparse
from dataclasses import asdict
from datetime import date
from pathlib import Path

import torch
from common import machine, write_json

from carbrand_search.core.config import DistillConfig
from carbrand_search.data.cache import default_cache_root
from carbrand_search.data.imagefolder import scan
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.search.teacher import prepare_teacher, teacher_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teachers", nargs="+", help="teacher study names (their best trial teaches)")
    ap.add_argument("--storage", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--study", default=str(REPO / "bench/studies/cars-student-long.toml"))
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/teacher-targets.json")
    args = ap.parse_args()
    if args.views < 1:
        ap.error("--views: at least 1 (the summary is of the cached views' outputs)")

    data = load_spec(args.study).base.data
    storage, artifacts = open_storage(args.storage), artifact_store(args.artifacts)
    tree = scan(args.data)
    cache = args.cache_dir or default_cache_root()
    rows = []
    for name in args.teachers:
        for t in args.temperatures:
            cfg = DistillConfig(teacher=name, views=args.views, temperature=t)
            tm = teacher_model(cfg, storage, artifacts, tree.classes)
            found = prepare_teacher(
                cfg, data, tm, tree.splits["train"], cache, False, torch.device("cpu")
            )
            row = {"teacher": name, "trial": tm.trial.number, "temperature": t}
            rows.append(row | {k: round(v, 4) for k, v in asdict(found.targets).items()})
            print(rows[-1], flush=True)
    write_json(
        args.out,
        {
            "machine": machine(),
            "date": date.today().isoformat(),
            "study": args.study,
            "views": args.views,
            "images": len(tree.splits["train"].files),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
