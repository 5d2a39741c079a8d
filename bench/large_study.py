"""How `status`, the live view, `report`'s study views and optuna-dashboard cope with a big study:
5,000 finished trials of 10 epochs each in PostgreSQL.

    python bench/large_study.py [--trials 5000] [--epochs 10] [--pg postgresql://…/postgres]
                                [--quick] [--out bench/results/large-study.json]

The trials are written by a trivial objective through the trial record's own writers
(`carbrand_search.search.record`), so each holds what a real trial leaves: its parameters, one
intermediate value per epoch, the per-epoch metrics list, the best epoch's metrics, a checkpoint
id, the class names, its worker and last epoch; one in three is pruned with a prune reason.
Attributes are written once per trial with their final value (a real trial rewrites them every
epoch), so filling the database is quicker than running; what is read back is the same.
"""

import argparse
import io
import math
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import date
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
import optuna
import psycopg
from common import machine, write_json
from optuna_dashboard import wsgi
from rich.console import Console

from carbrand_search.core.metric import EpochMetrics
from carbrand_search.progress import live_view, status_table, study_line
from carbrand_search.reports.report import _study_views
from carbrand_search.search import record, space
from carbrand_search.search.spec import spec_from_text
from carbrand_search.search.storage import open_storage
from carbrand_search.search.study import budget, ensure_study, trials
from carbrand_search.search.views import collapse_tally, overview

STUDY = """
[study]
n_trials = {n}
[model]
name = "small_cnn"
filters = [16, 32]
[train]
epochs = {epochs}
[space.train.lr]
low = 1e-4
high = 1e-1
log = true
default = 3e-3
[space.model.dropout]
low = 0.0
high = 0.5
default = 0.2
[space.train.batch_size]
choices = [16, 32, 64]
default = 32
[sampler]
name = "random"
"""
CLASSES = tuple(f"Brand {i}" for i in range(30))


def epoch_record(epoch: int, rng: np.random.Generator) -> EpochMetrics:
    accuracy = float(rng.uniform(0.03, 0.4))
    return EpochMetrics(
        epoch=epoch, train_loss=float(rng.uniform(2, 3.4)),
        val_loss=float(rng.uniform(2, 3.4)), val_accuracy=accuracy,
        val_macro_f1=accuracy * 0.9, top_class_share=float(rng.uniform(0.05, 1)),
        loss_ratio=float(rng.uniform(0.6, 1.0)), lr=1e-3, seconds=12.5,
    )  # fmt: skip


def fill(study: optuna.Study, spec_n: int, epochs: int, seed: int = 0) -> float:
    """`spec_n` finished trials through the record writers; seconds it took."""
    spec = spec_from_text(STUDY.format(n=spec_n, epochs=epochs), Path("large.toml"))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(spec_n):
        trial = study.ask()
        space.sample(trial, spec)
        history = [epoch_record(e, rng) for e in range(1, epochs + 1)]
        record.started(trial, f"bench-host:{1000 + i % 8}", f"cuda:{i % 8}")
        for m in history:
            trial.report(m.val_macro_f1, m.epoch)
        record.epoch_started(trial, epochs)
        record.epochs_done(trial, history)
        if i % 3 == 2:
            record.pruned(trial, record.PruneReason("one-class", epochs, {"loss_ratio": 0.99}))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        best = max(history, key=lambda m: m.val_macro_f1)
        record.completed(
            trial, checkpoint=str(uuid.uuid4()), best_epoch=best.epoch, val=best,
            classes=CLASSES,
        )  # fmt: skip
        study.tell(trial, best.val_macro_f1)
    return time.perf_counter() - start


def timed(fn, repeats: int = 3) -> float:
    """The best of `repeats` wall times of `fn()`, in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def dashboard_seconds(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, float]:
    """optuna-dashboard's study page: the HTML, then the study API it loads (all trials)."""
    server = make_server("127.0.0.1", 0, wsgi(storage), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def get(path: str) -> None:
        with urllib.request.urlopen(base + path, timeout=600) as response:
            assert response.status == 200
            response.read()

    try:
        return {
            "page_s": timed(lambda: get(f"/dashboard/studies/{study_id}")),
            "study_api_s": timed(lambda: get(f"/api/studies/{study_id}?after=0")),
        }
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/large-study.json"))
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = 30, 3
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    server = args.pg.replace("postgresql://", "postgresql+psycopg://")
    url = f"{server.rsplit('/', 1)[0]}/{database}"
    try:
        storage = open_storage(url)
        spec = spec_from_text(STUDY.format(n=args.trials, epochs=args.epochs), Path("large.toml"))
        study = ensure_study(spec, storage, args.trials)  # its queued defaults become trial 0
        fill_s = fill(study, args.trials, args.epochs)
        print(f"wrote {args.trials} trials of {args.epochs} epochs in {fill_s:.0f}s")
        sink = Console(file=io.StringIO(), width=200)

        def status_in_process() -> None:
            view = overview(open_storage(url), "large", 50)  # a fresh storage: nothing cached
            sink.print(status_table("large", view.shown, "val_macro_f1"))
            sink.print(study_line("large", view.counts, budget(study), view.best, "val_macro_f1"))

        def live_refresh() -> None:
            sink.print(live_view("large", trials(study), args.trials, "val_macro_f1", args.epochs))

        def study_views() -> None:
            found = study.get_trials()  # as `report` reads them
            collapse_tally(found)
            with tempfile.TemporaryDirectory() as tmp:
                _study_views(study, found, Path(tmp))

        command = [sys.executable, "-m", "carbrand_search", "status", "large", "--storage", url]
        rows = {
            "status_command_s": timed(
                lambda: subprocess.run(command, check=True, capture_output=True), repeats=2
            ),
            "status_in_process_s": timed(status_in_process),
            "live_view_refresh_s": timed(live_refresh),
            "report_study_views_s": timed(study_views, repeats=1),
        } | dashboard_seconds(storage, storage.get_study_id_from_name("large"))
        for name, seconds in rows.items():
            print(f"{name:>22}: {seconds:.3f}s")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    payload = {"machine": machine(), "date": str(date.today()), "trials": args.trials}
    payload |= {"epochs": args.epochs, "fill_s": round(fill_s, 1), "rows": rows}
    write_json(args.out, payload | {"args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
