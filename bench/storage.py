"""Trials per second of a trivial objective with 4 and 8 workers on SQLite, journal and PostgreSQL,
and whether any worker hit a lock error.

    python bench/storage.py [--workers 4 8] [--trials 50] [--pg postgresql://…/postgres]
                            [--quick] [--out bench/results/storage.json]

Each worker is a spawned process with its own storage object (as `run` does) that runs `--trials`
trials; the rate is all trials over the span from the first worker's first trial to the last one's
end (process start-up not counted). Storage opens through carbrand_search.storage.open_storage,
so SQLite runs with WAL and a busy timeout.
"""

import argparse
import multiprocessing as mp
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import optuna
import psycopg
from common import machine, write_json

from carbrand_search.search.storage import open_storage


def worker(url: str, trials: int, errors: "mp.Queue[str]", spans: "mp.Queue[tuple]") -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name="bench", storage=open_storage(url))
        start = time.time()  # wall clock: comparable across processes
        study.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2, n_trials=trials)
        spans.put((start, time.time()))
    except Exception as e:  # counted, not raised: the point is to see whether any occur
        errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def drain(queue: "mp.Queue") -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def measure(url: str, workers: int, trials: int) -> dict:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="bench", storage=open_storage(url))
    context = mp.get_context("spawn")
    errors, spans = context.Queue(), context.Queue()
    processes = [
        context.Process(target=worker, args=(url, trials, errors, spans)) for _ in range(workers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    windows, found = drain(spans), drain(errors)
    seconds = max(e for _, e in windows) - min(s for s, _ in windows) if windows else float("nan")
    done = len(optuna.load_study(study_name="bench", storage=open_storage(url)).trials)
    return {
        "workers": workers,
        "trials": done,
        "seconds": round(seconds, 2),
        "trials_per_s": round(done / seconds, 1),
        "errors": found,
        "lock_errors": sum("locked" in e for e in found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--trials", type=int, default=50, help="trials per worker")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/storage.json"))
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials = [2], 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            for kind in ("sqlite", "journal", "postgresql"):
                database = f"bench_{uuid.uuid4().hex[:8]}"
                if kind == "sqlite":
                    url = f"sqlite:///{tmp}/{workers}.db"
                elif kind == "journal":
                    url = f"journal://{tmp}/{workers}.log"
                else:
                    with psycopg.connect(args.pg, autocommit=True) as conn:
                        conn.execute(f'CREATE DATABASE "{database}"')
                    server = args.pg.replace("postgresql://", "postgresql+psycopg://")
                    url = f"{server.rsplit('/', 1)[0]}/{database}"
                row = {"storage": kind} | measure(url, workers, args.trials)
                if kind == "postgresql":
                    with psycopg.connect(args.pg, autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                rows.append(row)
                print(
                    f"{kind:>10} {workers:>2} workers: {row['trials']} trials in "
                    f"{row['seconds']}s, {row['trials_per_s']} trials/s, "
                    f"lock errors {row['lock_errors']}, "
                    f"other errors {len(row['errors']) - row['lock_errors']}"
                )
    payload = {"machine": machine(), "date": str(date.today()), "rows": rows}
    write_json(args.out, payload | {"args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
