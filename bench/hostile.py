"""Hostile inputs through the real CLI, each classified as the audit did: a one-line error
(exit code != 0, one line, no traceback), a traceback, a hang (no answer within the timeout) or a
silent accept (exit code 0 for input that must be refused).

    python bench/hostile.py [--quick] [--timeout 60] [--out FILE.json]

Every case is built in a temporary folder: study files, storage URLs, image folders, options.
`--quick` runs three cases (the test suite runs it).
"""

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from common import machine, study_text, write_json
from PIL import Image

from carbrand_search.data.demo import DemoSpec, write_demo

# A valid one-trial study; each study-file case breaks one thing in it.
TINY = study_text(n_trials=1, epochs=1, lr=(1e-3, 1e-2), collapse=False, size=32)


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given the case's own folder
    env: dict[str, str] | None = None


def study_file(text: str | bytes, name: str = "s.toml") -> Callable[[Path], list[str]]:
    """`run` of a study file holding `text`, on the demo data and a fresh SQLite file."""

    def args(folder: Path) -> list[str]:
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", str(path), *store(folder)]

    return args


def store(folder: Path) -> list[str]:
    return [
        "--data",
        str(folder.parent / "demo"),
        "--storage",
        f"sqlite:///{folder / 's.db'}",
        "--artifacts",
        str(folder / "art"),
    ]


def status_of(url: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["status", "tiny", "--storage", url]


def data_check(build: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """`data check` of a copy of the demo data that `build` made hostile."""

    def args(folder: Path) -> list[str]:
        tree = folder / "tree"
        shutil.copytree(folder.parent / "demo", tree, symlinks=True)
        build(tree / "train" / sorted(os.listdir(tree / "train"))[0])
        return ["data", "check", str(tree)]

    return args


def _eps(cls: Path) -> None:
    (cls / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")


def _empty(cls: Path) -> None:
    (cls / "empty.jpg").write_bytes(b"")


def _truncated(cls: Path) -> None:
    data = next(cls.iterdir()).read_bytes()
    (cls / "cut.jpg").write_bytes(data[: len(data) // 3])


def _fifo(cls: Path) -> None:
    os.mkfifo(cls / "fifo.jpg")


def _loop(cls: Path) -> None:
    (cls / "loop.jpg").symlink_to(cls / "loop.jpg")


def _huge(cls: Path) -> None:
    Image.new("L", (9000, 9000)).save(cls / "huge.png", optimize=False)  # 81 megapixels


def _corrupt_db(folder: Path) -> str:
    path = folder / "bad.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    return f"sqlite:///{path}"


def _force_here(folder: Path) -> list[str]:
    (folder / "keep.txt").write_text("mine")
    os.chdir(folder)
    return ["data", "split", str(folder.parent / "flat"), ".", "--force"]


CASES = [
    # Study files
    Case("study file not UTF-8", study_file('[study]\ndescription = "café"\n'.encode("latin-1"))),
    Case("study file of 2 MB", study_file(TINY + "# pad\n" * 400_000)),
    Case(
        "5,000 choices",
        study_file(
            TINY
            + "[space.train.weight_decay]\nchoices = ["
            + ", ".join(f"{1e-4 * (i + 1):.6f}" for i in range(5000))
            + "]\ndefault = 0.0001\n"
        ),
    ),
    Case("lr = nan", study_file(TINY.replace("epochs = 1", "epochs = 1\nlr = nan"))),
    Case("epochs = inf", study_file(TINY.replace("epochs = 1", "epochs = inf"))),
    Case("batch_size = -4", study_file(TINY.replace("batch_size = 32", "batch_size = -4"))),
    Case("unknown section", study_file(TINY + "[trian]\nepochs = 2\n")),
    Case("unknown key", study_file(TINY.replace("epochs = 1", "epochs = 1\nepoch = 2"))),
    Case(
        "a 64 GB model",
        study_file(
            TINY.replace(
                "filters = [16, 32, 64]", "filters = [4096, 4096, 4096]\nkernel_sizes = [31]"
            )
        ),
    ),
    Case("no blocks", study_file(TINY.replace("filters = [16, 32, 64]", "filters = []"))),
    Case("image_size = 0", study_file(TINY.replace("image_size = 28", "image_size = 0"))),
    Case("values nested 5,000 deep", study_file(TINY + "x = " + "[" * 5000 + "]" * 5000 + "\n")),
    Case("TOML syntax error", study_file(TINY + "[train\n")),
    Case("binary garbage", study_file(bytes(range(256)) * 4)),
    Case("empty study file", study_file("")),
    Case("a folder as the study", lambda f: ["run", str(f), *store(f)]),
    Case("a missing study", lambda f: ["run", "no-such-study", *store(f)]),
    Case(
        "default outside its range",
        study_file(TINY + "[space.train.weight_decay]\nlow = 1e-3\nhigh = 1e-2\ndefault = 5.0\n"),
    ),
    # Storage URLs
    Case("port not a number", status_of("postgresql+psycopg://u:pw@127.0.0.1:notaport/db")),
    Case("unclosed IPv6 host", status_of("postgresql+psycopg://u:pw@[::1/db")),
    Case("unencoded @ in the password", status_of("postgresql+psycopg://u:p@ss@127.0.0.1:9/db")),
    Case("unsupported scheme", status_of("mongodb://127.0.0.1/db")),
    Case("SQLite in a missing folder", status_of("sqlite:////no/such/folder/s.db")),
    Case("journal in a missing folder", status_of("journal:///no/such/folder/j.log")),
    Case(
        "example password in the URL", status_of("postgresql+psycopg://u:change-me@127.0.0.1:9/db")
    ),
    Case(
        "example password in the query",
        status_of("postgresql+psycopg://u@127.0.0.1:9/db?password=Change-Me"),
    ),
    Case(
        "example password in PGPASSWORD",
        status_of("postgresql+psycopg://u@127.0.0.1:9/db"),
        {"PGPASSWORD": "CHANGE-ME"},
    ),
    Case("unreachable PostgreSQL", status_of("postgresql+psycopg://u:pw@127.0.0.1:1/db")),
    Case("corrupted SQLite file", lambda f: ["status", "tiny", "--storage", _corrupt_db(f)]),
    # Image folders
    Case("a missing data folder", lambda f: ["data", "check", str(f / "nothing")]),
    Case("a folder with no splits", lambda f: ["data", "check", str(f)]),
    Case("EPS named .jpg", data_check(_eps)),
    Case("empty .jpg", data_check(_empty)),
    Case("truncated .jpg", data_check(_truncated)),
    Case("FIFO named .jpg", data_check(_fifo)),
    Case("link to itself", data_check(_loop)),
    Case("81-megapixel image", data_check(_huge)),
    # Options
    Case("--workers 0", lambda f: ["run", "cnn-demo", "--workers", "0", *store(f)]),
    Case("--n-trials 0", lambda f: ["run", "cnn-demo", "--n-trials", "0", *store(f)]),
    Case("--heartbeat 0", lambda f: ["run", "cnn-demo", "--heartbeat", "0", *store(f)]),
    Case(
        "--set an unknown key", lambda f: ["run", "cnn-demo", "--set", "train.nope=1", *store(f)]
    ),
    Case(
        "--set a word for a number",
        lambda f: ["run", "cnn-demo", "--set", "train.epochs=many", *store(f)],
    ),
    Case("--set without =", lambda f: ["run", "cnn-demo", "--set", "train.epochs", *store(f)]),
    Case("--force on the current folder", _force_here),
    Case(
        "predict from an empty storage",
        lambda f: [
            "predict",
            str(Path(__file__)),
            "--study",
            "tiny",
            "--storage",
            f"sqlite:///{f / 's.db'}",
        ],
    ),
    Case(
        "status of a missing study",
        lambda f: ["status", "ghost", "--storage", f"sqlite:///{f / 's.db'}"],
    ),
    Case(
        "dashboard on port 70000",
        lambda f: ["dashboard", "--port", "70000", "--storage", f"sqlite:///{f / 's.db'}"],
    ),
]
QUICK = ("study file not UTF-8", "port not a number", "EPS named .jpg")


def classify(case: Case, root: Path, timeout_s: float) -> dict[str, object]:
    folder = root / "".join(c if c.isalnum() else "-" for c in case.name)
    folder.mkdir()
    here = os.getcwd()
    try:
        args = case.args(folder)
    finally:
        cwd = os.getcwd()
        os.chdir(here)
    env = {
        **os.environ,
        "COLUMNS": "200",
        "CARBRAND_CACHE": str(root / "cache"),
        **(case.env or {}),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "carbrand_search", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        return {"case": case.name, "verdict": "hang", "exit": None, "said": ""}
    said = (done.stdout + done.stderr).strip()
    errors = [ln for ln in said.splitlines() if ln.startswith("error:")]
    if "Traceback" in said:
        verdict = "traceback"
    elif done.returncode == 0:
        verdict = "silent accept"
    elif len(errors) == 1:
        verdict = "one-line error"
    else:
        verdict = "other"  # refused, but not with one error line
    last = errors[-1] if errors else (said.splitlines() or [""])[-1]
    return {"case": case.name, "verdict": verdict, "exit": done.returncode, "said": last[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cases = [c for c in CASES if not args.quick or c.name in QUICK]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo(root / "demo", DemoSpec(classes=3, per_class=12, size=32, seed=0))
        for make in ("Audi", "Ford"):
            flat = root / "flat" / make
            flat.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(flat / f"{i}.png")
        rows = []
        for case in cases:
            row = classify(case, root, args.timeout)
            print(f"{row['verdict']:>15}  {case.name}: {row['said']}", flush=True)
            rows.append(row)
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "counts": dict(Counter(str(r["verdict"]) for r in rows)),
        "rows": rows,
    }
    print(result["counts"])
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
