"""Start-up cost: a worker module's import time, and the seconds from `run` to its first trial
RUNNING, for a small_cnn study and a timm study (RESULTS.md, issue 22).

    python bench/startup.py [--repeats 3] [--quick] [--out bench/results/startup.json]
"""

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import demo_data, machine, study_file, warm_cache, write_json

WORKER_MODULE = "carbrand_search.search.worker"
HEAVY = ("timm", "torchvision", "torch._dynamo", "sklearn")


def import_seconds(code: str) -> tuple[float, list[str]]:
    """Wall seconds of `python -c code` and which heavy modules it had loaded at the end."""
    probe = f"{code}\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, [m for m in out.stdout.strip().split(",") if m]


def build_code(model: str) -> str:
    """A worker's imports plus building `model` with the optimizer a trial makes for it."""
    params = "pretrained=False" if model != "small_cnn" else ""
    return (
        f"import {WORKER_MODULE}\nfrom carbrand_search import models\n"
        "from carbrand_search.core.config import TrainConfig\n"
        "from carbrand_search.training.optim import make_optimizer\n"
        f"make_optimizer(models.create({model!r}, 4, {params}), TrainConfig())"
    )


def best_of(repeats: int, code: str) -> dict[str, object]:
    seconds, loaded = zip(*(import_seconds(code) for _ in range(repeats)), strict=True)
    return {"s": round(min(seconds), 2), "loaded": loaded[0]}


def first_running(study: Path, data: Path, cache: Path, folder: Path) -> float:
    """Seconds from starting `run` (one worker) to the first trial RUNNING in its SQLite file;
    the run is stopped there, its worker with it."""
    db = folder / f"{study.stem}.db"
    args = [
        sys.executable,
        "-m",
        "carbrand_search",
        "run",
        str(study),
        "--storage",
        f"sqlite:///{db}",
    ]
    args += ["--data", str(data), "--workers", "1", "--cache-dir", str(cache)]
    args += ["--artifacts", str(folder / "artifacts")]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if db.exists() and _running(db):
                return time.perf_counter() - start
            time.sleep(0.02)
        raise RuntimeError(f"run ended with {proc.returncode} before a trial was RUNNING")
    finally:
        proc.terminate()  # `run` stops its workers on SIGTERM: none is left to slow the next
        proc.wait()


def _running(db: Path) -> bool:
    try:
        with sqlite3.connect(db, timeout=0.1) as conn:
            row = conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()
    except sqlite3.Error:  # the tables do not exist yet, or the file is locked this instant
        return False
    return bool(row and row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--quick", action="store_true", help="one repeat, small_cnn only, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/startup.json"))
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    families = ("small_cnn",) if args.quick else ("small_cnn", "efficientnet_b0")
    rows: dict[str, object] = {"machine": machine(), "date": str(date.today())}
    rows["worker_import"] = best_of(repeats, f"import {WORKER_MODULE}")
    for model in families:
        rows[f"worker_import_and_build_{model}"] = best_of(repeats, build_code(model))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = demo_data(folder / "demo", classes=4, per_class=20, size=64)
        cache = folder / "cache"
        for model in families:
            name = f"start-{model}"
            study = study_file(folder, name, 1, 1, (1e-3, 1e-2), False, 64, model=model)
            warm_cache(study, data, cache)
            times = []
            for i in range(repeats):
                run_dir = folder / f"{model}-{i}"
                run_dir.mkdir()
                times.append(first_running(study, data, cache, run_dir))
            rows[f"first_running_s_{model}"] = round(min(times), 2)
            rows[f"first_running_all_s_{model}"] = [round(t, 2) for t in times]
    print(rows)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
