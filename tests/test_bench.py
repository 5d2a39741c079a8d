"""The bench scripts run end to end in seconds with --quick and write valid JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.parametrize("script", ["study.py", "pruning.py"])
def test_bench_quick_writes_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["machine"] and result["date"]
    rows = result["rows"] if script == "study.py" else list(result["rows"].values())
    assert all(row["trials"] >= 1 and row["seconds"] > 0 for row in rows)
