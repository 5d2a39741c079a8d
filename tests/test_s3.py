"""Artifacts on S3: a study's checkpoints go to an S3-compatible server (moto, started here on
127.0.0.1) through Optuna's Boto3ArtifactStore wrapped in its Backoff, and `report` reads them
back."""

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import free_port, write_study
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.search import record
from carbrand_search.search.storage import RemoveOnceBackoff, artifact_store, open_storage

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
runner = CliRunner()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty bucket on a moto server of this test's own; yields its s3:// root."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="carbrand-test")
        yield "s3://carbrand-test"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_checkpoints_go_to_s3_and_report_reads_them_back(
    s3: str, demo_root: Path, tmp_path: Path
) -> None:
    assert isinstance(artifact_store(s3), optuna.artifacts.Backoff)  # one hiccup is retried
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=2, epochs=2)
    common = ["--storage", url, "--artifacts", s3, "--data", str(demo_root)]
    result = runner.invoke(app, ["run", str(study_file), *common])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    checkpoints = {record.read(t).checkpoint for t in study.get_trials() if t.value is not None}
    stored = {
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="carbrand-test")["Contents"]
    }
    assert checkpoints and checkpoints <= stored
    out = tmp_path / "report"
    report = runner.invoke(app, ["report", "tiny", *common, "--out", str(out)])
    assert report.exit_code == 0, report.output
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["trials"][0]["number"] == study.best_trial.number
    assert numbers["trials"][0]["test"]["images"] > 0  # the S3 checkpoint was evaluated


class CountingStore:
    """An in-memory artifact store that counts removals and fails the first `flaky` of them."""

    def __init__(self, flaky: int = 0) -> None:
        self.removals, self.flaky = 0, flaky

    def remove(self, artifact_id: str) -> None:
        self.removals += 1
        if self.removals <= self.flaky:
            raise ConnectionError("S3 hiccup")


def test_a_removal_that_succeeds_is_not_repeated() -> None:
    # Optuna 5's Backoff deletes again and sleeps after a success (31 s per removal on S3).
    store = CountingStore()
    RemoveOnceBackoff(store, max_retries=5, min_delay=1.0, max_delay=30.0).remove("x")  # type: ignore[arg-type]
    assert store.removals == 1
    flaky = CountingStore(flaky=1)
    RemoveOnceBackoff(flaky, max_retries=2, min_delay=0.01, max_delay=0.02).remove("x")  # type: ignore[arg-type]
    assert flaky.removals >= 2  # a failed removal is still retried
