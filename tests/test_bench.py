"""The bench scripts run end to end in seconds with --quick and write valid JSON; the GPU script
refuses a machine without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, Done, write_study

pytestmark = pytest.mark.slow  # each starts a bench script


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


def test_resume_bench(tmp_path: Path) -> None:
    (row,) = run_bench("resume.py", tmp_path / "result.json")["rows"]
    assert row["model"] == "small_cnn" and row["state_mb"] > 0 and row["save_s_median"] > 0


def test_cache_memory_bench(tmp_path: Path) -> None:
    result = run_bench("cache_memory.py", tmp_path / "result.json")
    assert result["decoded_mb"] > 0 and result["images"] == 40


def test_cpu_precision_bench_times_bf16_only_where_the_cpu_has_it(tmp_path: Path) -> None:
    result = run_bench("cpu_precision.py", tmp_path / "result.json")
    for row in result["speed"]:
        assert row["fp32"] > 0 and row["channels_last"] > 0
        # Emulated bf16 is 10-14x slower than float32: timing it only says so, at length.
        assert ("bf16+channels_last" in row) == result["bf16_native"]


def test_throughput_bench(tmp_path: Path) -> None:
    result = run_bench("throughput.py", tmp_path / "result.json")
    row = result["rows"][0]
    assert row["pipeline_img_s"] > 0 and row["in_memory_img_s"] > 0
    pipeline, memory = row["pipeline_img_s"], row["in_memory_img_s"]
    # Both rates are rounded to 0.1 img/s, which on a busy machine (a few img/s) is over 1%.
    rounding = 0.05 / memory + 0.05 * pipeline / memory**2 + 0.0005
    assert abs(row["pipeline_efficiency"] - pipeline / memory) <= rounding
    assert [row["processes"] for row in result["packed"]] == [1, 2]
    for row in result["packed"]:
        assert len(row["per_process_img_s"]) == row["processes"]
        assert all(rate > 0 for rate in row["per_process_img_s"])
        assert row["summed_img_s"] == pytest.approx(sum(row["per_process_img_s"]), abs=0.2)
    assert len(result["epochs"]) >= 1
    for epochs in result["epochs"]:
        assert epochs["images"] > 0 and epochs["source"]
        assert epochs["cold_epoch_s"] > 0 and epochs["cache_load_s"] > 0
        assert epochs["warm_epoch_s"] > 0 and epochs["decode_every_time_epoch_s"] > 0


def test_large_study_bench(tmp_path: Path) -> None:
    result = run_bench("large_study.py", tmp_path / "result.json")
    assert result["trials"] == 30
    assert all(seconds > 0 for seconds in result["rows"].values())


@pytest.mark.postgres
def test_storage_bench(tmp_path: Path) -> None:
    result = run_bench("storage.py", tmp_path / "result.json")
    assert {row["storage"] for row in result["rows"]} == {"sqlite", "journal", "postgresql"}
    assert all(row["trials"] == 10 and row["lock_errors"] == 0 for row in result["rows"])


@pytest.mark.slow
@pytest.mark.postgres
def test_many_workers_bench(tmp_path: Path) -> None:
    result = run_bench("many_workers.py", tmp_path / "result.json")
    assert {row["mode"] for row in result["rows"]} == {"direct", "proxy"}
    for row in result["rows"]:
        assert row["trials"] > 0 and row["errors"] == [] and row["peak_connections"] > 0
        assert row["sigkill_to_requeued_s"] is not None  # the killed trial was queued again


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs for minutes")
def test_gpu_script_refuses_without_a_gpu(tmp_path: Path) -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=os.environ | {"PATH": path},
    )  # fmt: skip
    assert done.returncode != 0
    assert "torch sees no CUDA GPU" in done.stderr
    assert not (tmp_path / "gpu.log").exists()


def test_startup_bench(tmp_path: Path) -> None:
    result = run_bench("startup.py", tmp_path / "result.json")
    assert result["worker_import"]["loaded"] == []  # no timm, torchvision, torch._dynamo, sklearn
    assert result["first_running_s_small_cnn"] > 0
    assert "timm" in result["worker_import_and_build_small_cnn"]["loaded"]  # the optimizer factory


def test_hostile_inputs_bench(tmp_path: Path) -> None:
    result = run_bench("hostile.py", tmp_path / "result.json")
    assert result["counts"] == {"one-line error": 3}, result["rows"]


def test_teacher_targets_bench(done: Done, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    ran = subprocess.run(
        [sys.executable, str(REPO / "bench" / "teacher_targets.py"), "tiny", *done.args(),
         "--study", str(write_study(tmp_path)), "--views", "2", "--temperatures", "1", "4",
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(out.read_text())
    assert result["views"] == 2 and result["images"] > 0
    cold, hot = result["rows"]
    assert (cold["teacher"], cold["temperature"], hot["temperature"]) == ("tiny", 1.0, 4.0)
    # The same views at both temperatures: the top class does not move, the spread only widens.
    assert cold["agreement"] == hot["agreement"]
    assert 0 < cold["others_entropy"] <= hot["others_entropy"] <= 1
