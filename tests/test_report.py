"""Reports, predict, compare and the dashboard, on a tiny study run in the test."""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import Done, free_port, write_study
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import load_image, scan, square_array
from carbrand_search.reports.evaluate import Evaluation
from carbrand_search.reports.gradcam import overlays
from carbrand_search.search import record, space
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.search.study import stored_spec
from carbrand_search.search.trained import load_trial_model
from carbrand_search.training.parts import augment_for, build_model

runner = CliRunner()
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _report(done: Done, out: Path, *extra: str):
    return runner.invoke(app, ["report", "tiny", "--out", str(out), *done.args(), *extra])


def _independent_predictions(
    done: Done,
) -> tuple[np.ndarray, np.ndarray, list[Path], tuple[str, ...]]:
    """The best trial's test predictions, computed here without the report code."""
    study = optuna.load_study(study_name="tiny", storage=open_storage(done.url))
    best = study.best_trial
    spec = stored_spec(study)
    config = spec.resolve(space.decode(spec, best.params))
    classes = record.read(best).classes
    model = build_model(config, len(classes))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        optuna.artifacts.download_artifact(
            artifact_store=artifact_store(str(done.artifacts)),
            artifact_id=record.read(best).checkpoint, file_path=str(path),
        )  # fmt: skip
        model.load_state_dict(load_file(str(path)))
    model.eval()
    split = scan(done.data).splits["test"]
    images = np.stack(
        [square_array(load_image(f), config.data.cache_size, config.data.fit) for f in split.files]
    )
    with torch.no_grad():
        preds = model(augment_for(config).eval_batch(torch.from_numpy(images))).argmax(1).numpy()
    return preds, np.array(split.labels), list(split.files), classes


def test_report_numbers_match_an_independent_evaluation(
    done: Done, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rep"
    monkeypatch.chdir(tmp_path)  # no ./demo-data here, no --data: only the stored path can work
    result = runner.invoke(app, ["report", "tiny", "--out", str(out), *done.store_args()])
    assert result.exit_code == 0, result.output
    for name in ("report.html", "report.md", "report.json"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    best = report["trials"][0]
    preds, labels, files, classes = _independent_predictions(done)
    assert best["test"]["accuracy"] == pytest.approx(float((preds == labels).mean()))
    cm = np.array(best["test"]["confusion_matrix"])
    assert cm.sum() == len(files) == best["test"]["images"]
    assert (np.diag(cm) == [(preds[labels == i] == i).sum() for i in range(len(classes))]).all()
    assert best["test"]["gradcam"]["correct"] == int((preds == labels).sum())
    verdict = best["test"]["verdict"]
    assert verdict["collapsed"] == (verdict["top_predicted_share"] >= 0.5)
    assert verdict["text"].startswith("collapsed" if verdict["collapsed"] else "no collapse")
    page = (out / "report.html").read_text()
    assert all(brand in page for brand in classes)
    assert page.count("data:image/png;base64,") >= 5
    assert "<img" in page and 'src="trial-' not in page  # nothing links outside the file
    markdown = (out / "report.md").read_text()
    # The metric is named, not called "objective" or "value".
    assert "val\\_macro\\_f1 " in markdown and "objective" not in markdown
    assert json.loads((out / "report.json").read_text())["metric"] == "val_macro_f1"
    for rel in best["images"].values():
        assert f"]({rel})" in markdown and (out / rel).is_file()
    assert (out / f"trial-{best['number']}" / "confusion.csv").read_text().count("\n") == len(
        classes
    ) + 1


@pytest.mark.parametrize(
    ("preds", "collapsed", "start", "times_chance"),
    [
        ([0, 0, 0, 0, 0, 0, 0, 1], True, "collapsed", 1.0),  # one brand takes 7 of 8
        ([0, 1, 2, 3, 0, 1, 2, 3], False, "no collapse", 4.0),  # all right
        ([1, 2, 3, 0, 1, 2, 3, 0], False, "no collapse", 0.0),  # spread out, all wrong
    ],
)
def test_verdict_from_the_matrix(
    preds: list[int], collapsed: bool, start: str, times_chance: float
) -> None:
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    ev = Evaluation(
        ("a", "b", "c", "d"), labels, np.array(preds), np.zeros((8, 4)), np.zeros((8, 2, 2, 3))
    )
    verdict = ev.verdict()
    assert verdict.collapsed is collapsed and verdict.text.startswith(start)
    assert verdict.times_chance == pytest.approx(times_chance)
    if not collapsed:
        assert f"{times_chance:.1f}× the 25% of guessing" in verdict.text


def test_the_verdict_sets_the_top_brands_share_of_predictions_beside_its_share_of_images() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # 'a' is 2 of 8 images
    preds = np.array([0, 0, 0, 1, 2, 2, 3, 3])  # and 3 of 8 predictions
    ev = Evaluation(("a", "b", "c", "d"), labels, preds, np.zeros((8, 4)), np.zeros((8, 2, 2, 3)))
    verdict = ev.verdict()
    assert (verdict.top_predicted_class, verdict.top_predicted_share) == ("a", 0.375)
    assert not verdict.collapsed and verdict.top_true_share == 0.25
    assert "takes 37.5% of predictions (25.0% of the images)" in verdict.text


def test_report_refuses_to_overwrite_without_force(done: Done, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = _report(done, out)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (out / "notes.txt").read_text() == "mine"
    forced = _report(done, out, "--force")
    assert forced.exit_code == 2 and "notes.txt" in forced.output  # not the report's to delete
    assert (out / "notes.txt").read_text() == "mine"


def test_report_force_replaces_only_an_earlier_report(
    done: Done, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`report --out . --force` once deleted the current folder with the storage in it: --force
    replaces a folder holding an earlier report only, never the current folder or one above."""
    out = tmp_path / "rep"
    assert _report(done, out).exit_code == 0
    forced = _report(done, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "report.json").is_file()
    monkeypatch.chdir(out)
    for here in (".", str(tmp_path)):
        refused = _report(done, Path(here), "--force")
        assert refused.exit_code == 2 and "current folder" in refused.output, here
    assert (out / "report.json").is_file()


def test_gradcam_overlays_differ_from_the_input(done: Done) -> None:
    study = optuna.load_study(study_name="tiny", storage=open_storage(done.url))
    tm = load_trial_model(study, study.best_trial, artifact_store(str(done.artifacts)))
    files = scan(done.data).splits["test"].files[:3]
    images = np.stack(
        [square_array(load_image(f), tm.config.data.cache_size, tm.config.data.fit) for f in files]
    )
    pictures = overlays(tm.model, tm.config.model.name, augment_for(tm.config), images, [0, 1, 2])
    size, out = images.shape[1], tm.config.data.image_size
    top = (size - out) // 2
    for picture, image in zip(pictures, images, strict=True):
        crop = image[top : top + out, top : top + out]
        assert picture.shape == crop.shape and picture.dtype == np.uint8
        assert np.abs(picture.astype(int) - crop.astype(int)).mean() > 5


def test_predict_returns_the_brand_the_model_knows(done: Done, tmp_path: Path) -> None:
    preds, labels, files, classes = _independent_predictions(done)
    recall = [(preds[labels == i] == i).mean() for i in range(len(classes))]
    brand = int(np.argmax(recall))
    right = next(
        f for f, p, y in zip(files, preds, labels, strict=True) if y == brand and p == brand
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no image here")
    cams = tmp_path / "cams"
    args = ["predict", str(right), str(broken), "--study", "tiny", "--cam", str(cams)]
    result = runner.invoke(app, [*args, "--storage", done.url, "--artifacts", str(done.artifacts)])
    assert result.exit_code == 1  # one file was unreadable
    line = next(ln for ln in result.output.splitlines() if ln.startswith(str(right)))
    assert line.split(": ", 1)[1].startswith(classes[brand] + " ")
    assert "broken.jpg: not a readable image" in result.output
    written = list(cams.iterdir())
    assert len(written) == 1 and Image.open(written[0]).size[0] > 0


def test_report_errors(done: Done, tmp_path: Path, demo_root: Path) -> None:
    empty = tmp_path / "empty.db"
    study = write_study(tmp_path, name="nothing", n_trials=1)
    optuna.create_study(study_name="nothing", storage=open_storage(f"sqlite:///{empty}"))
    none = runner.invoke(
        app, ["report", "nothing", "--storage", f"sqlite:///{empty}", "--out", str(tmp_path / "a")]
    )
    assert none.exit_code == 2 and "no complete trial" in none.output
    assert study.is_file()
    other = tmp_path / "other-data"
    shutil.copytree(demo_root, other)
    shutil.copytree(other / "test" / "Borealis", other / "test" / "Zephyr")
    for split in ("train", "val"):
        shutil.copytree(other / split / "Borealis", other / split / "Zephyr")
    mismatch = runner.invoke(
        app, ["report", "tiny", "--out", str(tmp_path / "b"), "--storage", done.url,
              "--artifacts", str(done.artifacts), "--data", str(other)],
    )  # fmt: skip
    assert mismatch.exit_code == 2 and "not trained on: ['Zephyr']" in mismatch.output
    assert not (tmp_path / "b").exists()
    broken = tmp_path / "broken-artifacts"
    shutil.copytree(done.artifacts, broken)
    for f in broken.iterdir():
        f.write_bytes(b"corrupt")
    corrupt = runner.invoke(
        app, ["report", "tiny", "--out", str(tmp_path / "c"), "--storage", done.url,
              "--artifacts", str(broken), "--data", str(done.data)],
    )  # fmt: skip
    assert corrupt.exit_code == 2 and "missing or corrupt" in corrupt.output
    empty_store = tmp_path / "no-artifacts"
    empty_store.mkdir()
    for command in (
        ["report", "tiny", "--out", str(tmp_path / "d"), "--data", str(done.data)],
        [
            "predict",
            str(next(p for p in (done.data / "test").rglob("*") if p.is_file())),
            "--study",
            "tiny",
        ],
    ):
        missing = runner.invoke(
            app, [*command, "--storage", done.url, "--artifacts", str(empty_store)]
        )
        assert missing.exit_code == 2 and "missing or corrupt" in missing.output, missing.output
        assert "Traceback" not in missing.output


@pytest.mark.parametrize("bad_id", ["../../outside.safetensors", "/etc/passwd", 7])
def test_checkpoint_ids_that_leave_the_store_are_one_line_errors(
    done: Done, bad_id: object
) -> None:
    study = optuna.load_study(study_name="tiny", storage=open_storage(done.url))
    trial = study.best_trial
    trial.user_attrs = {**trial.user_attrs, "checkpoint": bad_id}
    # A non-string id is a record carbrand-search never writes; the others name no artifact.
    expected = "changed outside carbrand-search" if bad_id == 7 else "missing or corrupt"
    with pytest.raises(UserError, match=expected) as info:
        load_trial_model(study, trial, artifact_store(str(done.artifacts)))
    assert "\n" not in str(info.value)


def test_compare_has_a_row_per_study(
    done: Done, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cmp"
    monkeypatch.chdir(tmp_path)  # the data is found where the run stored it
    result = runner.invoke(app, ["compare", "tiny", "tiny", "--out", str(out), *done.store_args()])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text())
    assert len(rows) == 2 and rows[0]["study"] == "tiny" and rows[0]["model"] == "small_cnn"
    assert rows[0]["trials run"] == 2
    head = "| test acc | macro-F1 | top make share | its share of images | confusion matrix |"
    assert head in (out / "compare.md").read_text()


def _start_dashboard(done: Done, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "carbrand_search", "dashboard", "--port", str(port),
         "--storage", done.url, "--artifacts", str(done.artifacts)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        assert time.monotonic() < deadline and server.poll() is None, "dashboard did not start"
        time.sleep(0.3)


def test_the_loopback_dashboard_answers_to_loopback_names_only(done: Done) -> None:
    """DNS rebinding: a page on evil.example that points its name at 127.0.0.1 reaches the
    dashboard (no login) with Host: evil.example. It gets a 403; this machine's names work."""
    port = free_port()
    server = _start_dashboard(done, port)
    try:

        def status(host: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/studies", headers={"Host": host}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status(f"127.0.0.1:{port}") == 200
        assert status(f"localhost:{port}") == 200
        assert status(f"evil.example:{port}") == 403
        assert status("evil.example") == 403
        assert status("127.0.0.1.evil.example") == 403
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_dashboard_shows_the_study_in_a_browser(done: Done, tmp_path: Path) -> None:
    port = free_port()
    server = _start_dashboard(done, port)
    try:
        dom = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{port}/dashboard"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "tiny" in dom.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_report_html_renders_to_a_non_blank_screenshot(done: Done, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert _report(done, out).exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # text and charts, not an empty white page
    assert (pixels < 128).mean() > 0.01
