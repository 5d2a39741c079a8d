"""The bench scripts run end to end in seconds with --quick and write valid JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def run_bench(script: str, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["machine"] and result["date"]
    return result


@pytest.mark.parametrize("script", ["study.py", "pruning.py"])
def test_study_benches(script: str, tmp_path: Path) -> None:
    result = run_bench(script, tmp_path / "result.json")
    rows = result["rows"] if script == "study.py" else list(result["rows"].values())
    assert all(row["trials"] >= 1 and row["seconds"] > 0 for row in rows)


def test_throughput_bench(tmp_path: Path) -> None:
    result = run_bench("throughput.py", tmp_path / "result.json")
    row = result["rows"][0]
    assert row["pipeline_img_s"] > 0 and row["in_memory_img_s"] > 0
    assert row["pipeline_efficiency"] == pytest.approx(
        row["pipeline_img_s"] / row["in_memory_img_s"], rel=0.01
    )
    epochs = result["epochs"]
    assert (
        epochs["cold_epoch_s"] > 0
        and epochs["warm_epoch_s"] > 0
        and epochs["decode_every_time_epoch_s"] > 0
    )


def test_storage_bench(tmp_path: Path) -> None:
    result = run_bench("storage.py", tmp_path / "result.json")
    assert {row["storage"] for row in result["rows"]} == {"sqlite", "journal", "postgresql"}
    assert all(row["trials"] == 10 and row["lock_errors"] == 0 for row in result["rows"])
