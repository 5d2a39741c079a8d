"""Many workers on one study: PostgreSQL directly against the gRPC proxy (`carbrand-search
proxy`), with a trivial objective (no torch).

    python bench/many_workers.py [--workers 8 32 64] [--seconds 30] [--heartbeat 2]
                                 [--pg postgresql://…/postgres] [--quick]
                                 [--out bench/results/many-workers.json]

For each mode and N: N spawned worker processes open the storage as `run`'s workers do
(heartbeat on, a dead worker's trial queued again), wait at a barrier until all have started,
then optimise x² for `--seconds` (and on until the killed trial below is queued again: the
live workers are what sweeps it). One more worker starts a trial that never ends and is
SIGKILLed once it runs. Recorded:
- trials per second over the window (all COMPLETE trials of the N workers);
- peak connections to the study's database (pg_stat_activity, sampled every 0.2 s);
- errors: worker exceptions and FAIL trials other than the victim's; lock waits: the most
  backends seen at once waiting on a lock (wait_event_type = 'Lock'), and in how many samples;
- SIGKILL → re-queued: from the kill to the retry trial's appearance (its `failed_trial`).
"""

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import optuna
import psycopg
from common import machine, write_json

from carbrand_search.search.storage import open_storage

# As `run` opens it for its workers (retry.open_for_work), without importing the trainer's
# modules into every one of up to 64 processes: a trial whose worker died runs again.
STALE_RETRIES = 3


def open_for_work(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    return open_storage(url, heartbeat_s, stale_retries=STALE_RETRIES)


STUDY = "many"
WAIT_S = 120  # the longest the victim's trial may take to start, and to be queued again


def worker(
    url: str, heartbeat_s: int, seconds: float, ready: Any, start: Any, done: Any, errors: Any
) -> None:
    """Optimises x² for `seconds`, and on until `done`: the live workers are what sweeps the
    victim's stale trial, so they must outlast its requeue however slowly the machine runs."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        try:
            study = optuna.load_study(study_name=STUDY, storage=open_for_work(url, heartbeat_s))
        finally:
            ready.put(os.getpid())  # a worker that could not even connect is counted, not awaited
        start.wait()
        began = time.monotonic()

        def enough(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
            if time.monotonic() - began >= seconds and done.is_set():
                study.stop()

        study.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2, callbacks=[enough])
    except Exception as e:  # counted, not raised: the point is to see whether any occur
        errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def victim(url: str, heartbeat_s: int, ready: Any, start: Any) -> None:
    """Runs one trial that never ends, until it is SIGKILLed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=STUDY, storage=open_for_work(url, heartbeat_s))
    finally:
        ready.put(os.getpid())
    start.wait()

    def hang(trial: optuna.Trial) -> float:
        trial.set_user_attr("victim", True)
        time.sleep(3600)
        return 0.0

    study.optimize(hang, n_trials=1)


class Sampler(threading.Thread):
    """Samples pg_stat_activity for `database` every 0.2 s: peak connections, lock waits."""

    def __init__(self, admin: str, database: str) -> None:
        super().__init__(daemon=True)
        # Connected before the workers start: with many workers the server may be full later.
        self.conn = psycopg.connect(admin, autocommit=True)
        self.database = database
        self.stop = threading.Event()
        self.peak = self.lock_peak = self.lock_samples = self.samples = 0

    def run(self) -> None:
        with self.conn as conn:
            while not self.stop.wait(0.2):
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
                    "FROM pg_stat_activity WHERE datname = %s",
                    (self.database,),
                ).fetchone()
                assert row is not None
                self.samples += 1
                self.peak = max(self.peak, row[0])
                self.lock_peak = max(self.lock_peak, row[1])
                self.lock_samples += row[1] > 0


def start_proxy(url: str, port: int, heartbeat_s: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "carbrand_search", "proxy", "--storage", url]
    command += ["--port", str(port), "--heartbeat", str(heartbeat_s)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            open_storage(f"grpc://127.0.0.1:{port}")
            return proc
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.5)


def measure(admin: str, mode: str, workers: int, seconds: float, heartbeat_s: int) -> dict:
    database = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    direct = (
        f"{admin.replace('postgresql://', 'postgresql+psycopg://').rsplit('/', 1)[0]}/{database}"
    )
    proxy = None
    url = direct
    if mode == "proxy":
        port = 13000 + os.getpid() % 1000
        proxy = start_proxy(direct, port, heartbeat_s)
        url = f"grpc://127.0.0.1:{port}"
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    context = mp.get_context("spawn")
    start, done, ready, errors = context.Event(), context.Event(), context.Queue(), context.Queue()
    processes = [
        context.Process(
            target=worker, args=(url, heartbeat_s, seconds, ready, start, done, errors)
        )
        for _ in range(workers)
    ]
    doomed = context.Process(target=victim, args=(url, heartbeat_s, ready, start))
    sampler = Sampler(admin, database)
    for p in [*processes, doomed]:
        p.start()
    for _ in range(workers + 1):  # start-up (imports) is not what is measured
        ready.get(timeout=600)
    sampler.start()
    began = time.time()
    start.set()
    study = optuna.load_study(study_name=STUDY, storage=open_storage(direct))
    victim_trial = None
    # Not bounded by `seconds`: on a loaded machine the victim's trial may start late.
    while victim_trial is None and doomed.is_alive() and time.time() - began < WAIT_S:
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,), deepcopy=False)
        victim_trial = next((t for t in running if t.user_attrs.get("victim")), None)
        time.sleep(0.1)
    requeued_s = None
    if victim_trial is not None:
        os.kill(doomed.pid or 0, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < WAIT_S:
            found = study.get_trials(deepcopy=False)
            if any(t.system_attrs.get("failed_trial") == victim_trial.number for t in found):
                requeued_s = round(time.monotonic() - killed, 1)
                break
            time.sleep(0.2)
    done.set()
    for p in processes:
        p.join()
    ended = time.time()
    sampler.stop.set()
    sampler.join()
    found = study.get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in found)
    failed = [t.number for t in found if t.state == optuna.trial.TrialState.FAIL]
    worker_errors = []
    while not errors.empty():
        worker_errors.append(errors.get())
    if proxy is not None:
        proxy.terminate()
        proxy.communicate(timeout=30)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return {
        "mode": mode,
        "workers": workers,
        "trials": complete,
        "seconds": round(ended - began, 1),
        "trials_per_s": round(complete / (ended - began), 1),
        "peak_connections": sampler.peak,
        "lock_wait_peak": sampler.lock_peak,
        "lock_wait_samples": f"{sampler.lock_samples}/{sampler.samples}",
        "errors": worker_errors,
        "failed_trials_besides_victim": len(failed) - (victim_trial is not None),
        "sigkill_to_requeued_s": requeued_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--heartbeat", type=int, default=2)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/many-workers.json"))
    args = parser.parse_args()
    if args.quick:
        args.workers, args.seconds, args.heartbeat = [2], 5, 1
    with psycopg.connect(args.pg) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    rows = []
    for workers in args.workers:
        for mode in ("direct", "proxy"):
            result = measure(args.pg, mode, workers, args.seconds, args.heartbeat)
            rows.append(result)
            print(
                f"{mode:>6} {workers:>2} workers: {result['trials_per_s']} trials/s, "
                f"peak {result['peak_connections']} connections, lock waits "
                f"{result['lock_wait_samples']}, errors {len(result['errors'])}, "
                f"re-queued {result['sigkill_to_requeued_s']} s after SIGKILL",
                flush=True,
            )
    payload = {"machine": machine(), "date": str(date.today()), "rows": rows}
    payload["max_connections"] = int(row[0]) if row else None
    write_json(args.out, payload | {"args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
