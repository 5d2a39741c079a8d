"""Shared fixtures and helpers: tiny datasets made by the tests, seeded RNGs, one torch thread,
fresh PostgreSQL databases, CLI subprocesses and ways to catch a worker mid-trial."""

import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import psycopg
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from PIL import Image
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.data.demo import DemoSpec, write_demo
from carbrand_search.search import record
from carbrand_search.search.storage import open_storage

os.environ["COLUMNS"] = "200"  # rich reads the width once, when the CLI module is imported

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def _seeded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    monkeypatch.setenv("CARBRAND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARBRAND_STUDIES", str(REPO / "studies"))


def write_tree(
    root: Path, classes: dict[str, int], splits=("train", "val", "test"), size=24
) -> Path:
    """A tiny ImageFolder of random PNGs: `classes` maps class name → images per split."""
    rng = np.random.default_rng(0)
    for split in splits:
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tiny", {"Alfa Romeo": 3, "BMW": 3, "Citroën": 3})


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic demo dataset, small: 6 brands × 60 images at 64 px."""
    root = tmp_path_factory.mktemp("demo") / "demo-data"
    write_demo(root, DemoSpec(classes=6, per_class=60, size=64, seed=0))
    return root


@pytest.fixture
def demo_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data that a test may modify."""
    return Path(shutil.copytree(demo_root, tmp_path / "demo-data"))


@dataclass(frozen=True)
class Done:
    """A finished tiny study: where it is stored and what it was trained on."""

    url: str
    artifacts: Path
    data: Path
    root: Path

    def store_args(self) -> list[str]:
        """Where the study is; a report then finds its data from what the run stored."""
        return ["--storage", self.url, "--artifacts", str(self.artifacts)]

    def args(self) -> list[str]:
        return [*self.store_args(), "--data", str(self.data)]


@pytest.fixture(scope="session")
def done(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Done:
    """One study `tiny` (2 trials × 6 epochs) run once through the CLI, for every test that only
    reads a finished study: report, compare, predict, status, studies, the dashboard."""
    root = tmp_path_factory.mktemp("done")
    study = write_study(root, n_trials=2, epochs=6)
    finished = Done(f"sqlite:///{root / 'study.db'}", root / "artifacts", demo_root, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARBRAND_CACHE", str(root / "cache"))
        result = CliRunner().invoke(app, ["run", str(study), *finished.args()])
    assert result.exit_code == 0, result.output
    return finished


@pytest.fixture
def done_copy(done: Done, tmp_path: Path) -> Done:
    """A private copy of `done` (database and artifacts) that a test may change."""
    root = tmp_path / "done"
    shutil.copytree(done.root, root, ignore=shutil.ignore_patterns("cache"))
    return Done(f"sqlite:///{root / 'study.db'}", root / "artifacts", done.data, root)


def write_study(
    folder: Path,
    name: str = "tiny",
    n_trials: int = 4,
    epochs: int = 2,
    lr: str = "",
    collapse: bool = False,
) -> Path:
    """A study small enough for CPU tests: 28 px, two conv blocks, a couple of epochs."""
    lr_space = lr or "low = 1e-3\nhigh = 1e-2\nlog = true\ndefault = 3e-3"
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
[study]
n_trials = {n_trials}
[data]
cache_size = 32
image_size = 28
[model]
name = "small_cnn"
filters = [8, 16]
dense_units = 32
batch_norm = true
[train]
epochs = {epochs}
batch_size = 32
[space.train.lr]
{lr_space}
[space.model.dropout]
low = 0.0
high = 0.5
default = 0.1
[sampler]
name = "random"
[pruner]
collapse = {str(collapse).lower()}
warmup_epochs = 1
optuna = "none"
"""
    )
    return path


@pytest.fixture
def pg() -> Iterator[tuple[str, str]]:
    """(storage URL, database name) of a fresh PostgreSQL database, dropped afterwards."""
    name = f"cbs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxied(pg: tuple[str, str]) -> Iterator[str]:
    """grpc:// URL of a `carbrand-search proxy` process (heartbeat 1 s) serving a fresh
    PostgreSQL database; stopped with SIGTERM afterwards, which it must take cleanly."""
    port = free_port()
    proc = start_cli("proxy", "--storage", pg[0], "--port", str(port), "--heartbeat", "1")
    url = f"grpc://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        return answers(url)

    wait_for(up, timeout_s=60)
    yield url
    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "proxy stopped" in output, output


def answers(url: str) -> bool:
    """Whether the storage at `url` (a proxy that may be starting) can be opened."""
    try:
        open_storage(url)
    except UserError:
        return False
    return True


def cli(*args: str) -> list[str]:
    """The command line of `carbrand-search ARGS` in this interpreter."""
    return [sys.executable, "-m", "carbrand_search", *args]


# A shell running the tests in the background starts them with SIGINT ignored, which every
# child would inherit (and Python then installs no Ctrl-C handler): handled here, it is back to
# the default in a child at exec. This replaces a preexec_fn, which ran Python in the forked
# child: with the test's gRPC client threads holding a lock at the fork, the child hung there and
# so did the test (a fresh-clone CI run: the signals test's proxy variant, in Popen for minutes).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def start_cli(
    *args: str, env: dict[str, str] | None = None, own_group: bool = False
) -> subprocess.Popen:
    """`carbrand-search ARGS` in a subprocess, stdout and stderr together, SIGINT as in a shell;
    `own_group`: in a process group of its own, which a test signals as a terminal's Ctrl-C
    does (every process in it)."""
    return subprocess.Popen(
        cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=own_group,
    )  # fmt: skip


def injected(folder: Path, code: str) -> dict[str, str]:
    """An environment whose Python processes (a `run` and the workers it spawns) run `code`
    at start-up, as a `sitecustomize` module: how a test makes a real worker process fail at
    a chosen point, with nothing for tests in the package itself."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP) right now."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


def trials_of(url: str, name: str = "tiny") -> list[FrozenTrial]:
    """The study's trials; none while it has not been created yet."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    except KeyError:
        return []


def finished(url: str, name: str = "tiny") -> int:
    return sum(t.state in FINISHED for t in trials_of(url, name))


def wait_for(predicate: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def running(url: str, min_epoch: int = 1) -> list[FrozenTrial]:
    """Trials running at `min_epoch` or later."""
    return [
        t
        for t in trials_of(url)
        if t.state == TrialState.RUNNING and (record.read(t).epoch or 0) >= min_epoch
    ]


def freeze_a_running_worker(url: str, min_epoch: int = 1) -> tuple[int, FrozenTrial]:
    """SIGSTOP the worker of a trial running at `min_epoch` or later and return (its pid, that
    trial, still RUNNING).

    A stopped worker cannot finish its trial, so what a test does next does not depend on how
    fast the machine trains (on a GPU a tiny trial may end before a test can act on it)."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "no trial ran long enough to be caught"
        found = running(url, min_epoch)
        if not found:
            time.sleep(0.1)
            continue
        seen = found[0]
        pid = record.read(seen).pid
        assert pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue  # that worker has just exited
        if holds_sqlite_lock(url):
            os.kill(pid, signal.SIGCONT)  # stopped inside a transaction: it would block us all
            time.sleep(0.05)
            continue
        now = next(t for t in trials_of(url) if t.number == seen.number)
        if now.state == TrialState.RUNNING:
            return pid, now
        os.kill(pid, signal.SIGCONT)  # it finished the trial before it stopped: try again


def holds_sqlite_lock(url: str) -> bool:
    """Whether someone holds the write lock of SQLite storage `url` (every transaction of ours
    begins IMMEDIATE, reads included); False for other storages."""
    if not url.startswith("sqlite:///"):
        return False
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def signal_pending(pid: int, signum: int) -> bool:
    """Whether stopped process `pid` has `signum` waiting for it (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [
        int(line.split()[1], 16)
        for line in status.splitlines()
        if line[:6] in ("SigPnd", "ShdPnd")
    ]
    return any(mask & (1 << (signum - 1)) for mask in masks)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
