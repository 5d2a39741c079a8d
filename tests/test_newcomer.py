"""What a newcomer trips over, through the real CLI on tiny data: `run --set`, reports that
remember the data, OS clutter in datasets, the evidence on the dashboard for pruned trials."""

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import Done, cli, write_study, write_tree
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
from optuna_dashboard._note import get_note_from_system_attrs
from test_pruners import epoch_metrics
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.data.imagefolder import scan
from carbrand_search.search import record
from carbrand_search.search.options import RunOptions
from carbrand_search.search.runner import preflight
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import open_storage
from carbrand_search.search.study import stored_spec

runner = CliRunner()


def run(study: Path, url: str, data: Path, tmp_path: Path, *extra: str):
    args = ["run", str(study), "--storage", url, "--data", str(data)]
    return runner.invoke(app, [*args, "--artifacts", str(tmp_path / "a"), *extra])


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=open_storage(url))


@pytest.mark.slow
def test_run_set_is_stored_with_the_study_and_a_change_is_refused(
    demo_root: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=2, epochs=3)
    sets = ["--set", "train.epochs=1", "--set", "model.dropout=0.2"]
    result = run(study_file, url, demo_root, tmp_path, *sets)
    assert result.exit_code == 0, result.output
    study = load(url)
    spec = stored_spec(study)  # what workers, status and reports read
    assert spec.base.train.epochs == 1 and '"train.epochs" = 1' in spec.text
    assert [p.key for p in spec.space] == ["train.lr"]  # dropout is fixed now, not searched
    done = study.get_trials()
    assert all(len(record.read(t).epochs) == 1 and "model.dropout" not in t.params for t in done)
    changed = run(study_file, url, demo_root, tmp_path, "--set", "train.epochs=2")
    assert changed.exit_code == 2 and "other --set overrides" in changed.output
    bad = run(study_file, url, demo_root, tmp_path, *sets, "--set", "train.epochs=0")
    assert bad.exit_code == 2 and "--set" in bad.output and "train.epochs" in bad.output
    assert len(load(url).get_trials()) == len(done)  # refused before anything was stored


def test_a_report_names_data_that_is_not_there(done_copy: Done, tmp_path: Path) -> None:
    # Finding the stored data path from another folder: test_report's report and compare tests.
    out, common = str(tmp_path / "r"), done_copy.store_args()
    other = runner.invoke(app, ["report", "tiny", "--out", out, "--data", "nope", *common])
    assert other.exit_code == 2 and "nope" in other.output  # --data still overrides
    study = load(done_copy.url)
    study.set_user_attr("data", {"given": "gone", "resolved": "/gone", "cache": None})
    moved = runner.invoke(app, ["report", "tiny", "--out", out, *common])
    assert moved.exit_code == 2 and "which is not here; pass --data" in moved.output


def test_clutter_is_skipped_and_counted(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "cars", {"Audi": 3, "BMW": 3})
    clutter = [
        "train/Audi/Thumbs.db", "train/Audi/desktop.ini", "train/Audi/.DS_Store",
        "train/Audi/._0.png", "train/Audi/labels.csv", "val/BMW/@eaDir/0.png/SYNOPHOTO.jpg",
        "train/README.txt", "test/__MACOSX/Audi/._0.png", "val/.hidden/x.png",
    ]  # fmt: skip
    for name in clutter:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")
    tree = scan(root)
    assert tree.classes == ("Audi", "BMW")  # neither __MACOSX nor @eaDir became a class
    assert sorted(p.name for p in tree.clutter) == sorted(Path(n).name for n in clutter)
    assert all(len(s.files) == 6 for s in tree.splits.values())
    checked = runner.invoke(app, ["data", "check", str(root)])
    assert checked.exit_code == 0, checked.output
    assert f"skipped {len(clutter)} file(s) that are not images" in checked.output
    notes: list[str] = []  # `run`'s preflight says it too, before any worker starts
    progress = SimpleNamespace(note=notes.append, warning=notes.append, decoding=lambda *a: None)
    spec = load_spec(str(write_study(tmp_path)))
    preflight(spec, RunOptions(data=root, artifacts=str(tmp_path / "a")), progress)  # type: ignore[arg-type]
    assert any(f"skipped {len(clutter)} file(s) that are not images" in n for n in notes)
    (root / "train" / "Audi" / "broken.jpg").write_bytes(b"not a jpeg")
    broken = runner.invoke(app, ["data", "check", str(root)])
    assert broken.exit_code == 2 and "broken.jpg" in broken.output  # an image that fails
    skipped = runner.invoke(app, ["data", "check", str(root), "--skip-bad"])
    assert skipped.exit_code == 0, skipped.output


@pytest.mark.slow
def test_collapsed_trials_are_pruned_and_say_why_everywhere(
    demo_root: Path, tmp_path: Path
) -> None:
    """One diverging study: the collapse rules prune every trial early, and the reason shows in
    the trial record, `status`, the trial's evidence on the dashboard, the study's note and
    MLflow."""
    from mlflow.tracking import MlflowClient

    url = f"sqlite:///{tmp_path / 'study.db'}"
    huge_lr = "low = 5.0\nhigh = 10.0\ndefault = 5.0"  # 10 is the most train.lr accepts
    study_file = write_study(tmp_path, n_trials=2, epochs=8, lr=huge_lr, collapse=True)
    uri = f"file:{tmp_path / 'mlruns'}"
    study_file.write_text(
        study_file.read_text() + f'\n[tracking]\nmlflow = true\nmlflow_uri = "{uri}"\n'
    )
    assert run(study_file, url, demo_root, tmp_path).exit_code == 0
    study = load(url)
    store = open_storage(url)
    client = MlflowClient(tracking_uri=uri)
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    }
    for trial in study.get_trials():
        assert trial.state == TrialState.PRUNED
        stored = record.read(trial)
        reason = stored.prune_reason
        assert reason is not None and reason.rule in ("one-class", "chance-loss", "diverged")
        assert reason.epoch < 8 and len(stored.epochs) == reason.epoch
        names = sorted(m.filename for m in get_all_artifact_meta(trial, storage=store))
        assert names == ["val-confusion.png", "val-curves.png"]
        tracked = runs[f"trial-{trial.number}"]
        assert tracked.info.status == "KILLED" and tracked.data.tags["optuna.state"] == "PRUNED"
        assert f'"rule": "{reason.rule}"' in tracked.data.tags["prune_reason"]
    status = runner.invoke(app, ["status", "tiny", "--storage", url])
    assert status.exit_code == 0 and "rule=" in status.output and "2 pruned" in status.output
    attrs = store.get_study_system_attrs(store.get_study_id_from_name("tiny"))
    note = get_note_from_system_attrs(attrs, None)["body"]
    assert note.startswith("# tiny") and os.fspath(demo_root) in note
    assert "2/2 finished (0 complete, 2 pruned)" in note and "collapse tally: 2 pruned" in note


@pytest.mark.slow
def test_trials_are_tracked_in_mlflow_and_tensorboard(demo_root: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=2, epochs=2)
    uri, board = f"file:{tmp_path / 'mlruns'}", tmp_path / "tb"
    study_file.write_text(
        study_file.read_text()
        + f'\n[tracking]\nmlflow = true\nmlflow_uri = "{uri}"\ntensorboard = "{board}"\n'
    )
    assert run(study_file, url, demo_root, tmp_path).exit_code == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for trial in load(url).get_trials():
        found = runs[f"trial-{trial.number}"]
        assert found.data.tags["optuna.state"] == trial.state.name
        assert found.data.params["train.lr"] == str(trial.params["train.lr"])
        history = client.get_metric_history(found.info.run_id, "val_macro_f1")
        assert [m.step for m in history] == [1, 2]
        values = [e.val_macro_f1 for e in record.read(trial).epochs]
        assert [m.value for m in history] == pytest.approx(values)
        pictures = {a.path for a in client.list_artifacts(found.info.run_id)}
        assert pictures == {"val-curves.png", "val-confusion.png"}
        events = EventAccumulator(str(board / "tiny" / f"trial-{trial.number}"))
        events.Reload()
        assert [s.value for s in events.Scalars("val_macro_f1")] == pytest.approx(values)


def test_status_reads_only_the_trials_it_shows(tmp_path: Path) -> None:
    from carbrand_search.search.views import overview

    for url in (f"sqlite:///{tmp_path / 'a.db'}", f"journal://{tmp_path / 'j.log'}"):
        study = optuna.create_study(study_name="big", storage=open_storage(url))
        running = study.ask()  # trial 0: older than the last 50, still shown
        for i in range(60):
            done = optuna.trial.create_trial(value=float(i % 7), params={}, distributions={})
            study.add_trial(done)
        pruned = study.ask()
        study.tell(pruned, state=TrialState.PRUNED)
        view = overview(open_storage(url), "big", last=50)
        expected = {TrialState.COMPLETE: 60, TrialState.RUNNING: 1, TrialState.PRUNED: 1}
        assert view.counts == expected
        assert [t.number for t in view.shown] == [running.number, *range(12, 62)]
        assert view.best is not None and view.best.value == 0.0  # minimised
        assert len(overview(open_storage(url), "big", last=None).shown) == 62


@pytest.mark.slow
def test_only_the_best_checkpoints_are_kept(demo_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=8, epochs=1)
    study_file.write_text(
        study_file.read_text().replace("n_trials = 8", "n_trials = 8\nkeep_checkpoints = 3")
    )
    assert run(study_file, url, demo_root, tmp_path).exit_code == 0
    study = load(url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    kept = {
        t.number for t in complete if (tmp_path / "a" / str(record.read(t).checkpoint)).is_file()
    }
    best = sorted(complete, key=lambda t: t.value or 0.0, reverse=True)[:3]
    assert len(complete) > 3 and kept == {t.number for t in best}
    common = ["--storage", url, "--artifacts", str(tmp_path / "a")]
    status = runner.invoke(app, ["status", "tiny", *common])
    assert status.exit_code == 0 and "artifacts:" in status.output and "MB in" in status.output
    gone = next(t.number for t in complete if t.number not in kept)
    image = next((demo_root / "test").rglob("*.jpg"))
    predicted = runner.invoke(
        app, ["predict", str(image), "--study", "tiny", "--trial", str(gone), *common]
    )
    assert predicted.exit_code == 2 and "keep_checkpoints" in predicted.output


def test_shipped_studies_are_found_from_any_folder_without_settings(tmp_path: Path) -> None:
    # The README's first command names `cnn-demo` from an empty folder, with no CARBRAND_STUDIES
    # (the test fixture sets it; a newcomer's shell does not).
    env = {k: v for k, v in os.environ.items() if k != "CARBRAND_STUDIES"}
    done = subprocess.run(
        cli("create", "cnn-demo", "--storage", f"sqlite:///{tmp_path / 's.db'}"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert optuna.load_study(study_name="cnn-demo", storage=f"sqlite:///{tmp_path / 's.db'}")


@pytest.mark.slow
def test_run_logs_a_line_per_finished_trial_when_not_a_terminal(
    done_copy: Done, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a log file, `docker compose logs` or CI, `run` printed its first and last lines only,
    however long it ran: each finished trial now gets a line, with its value and the metric,
    and the study line comes every SUMMARY_EVERY_S (here: at every look)."""
    from carbrand_search import progress

    monkeypatch.setattr(progress, "SUMMARY_EVERY_S", 0)
    study_file = str(done_copy.root / "tiny.toml")
    result = runner.invoke(app, ["run", study_file, "--n-trials", "4", *done_copy.args()])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("trial ")]
    assert [ln.split()[1] for ln in lines] == ["2", "3"], result.output
    assert all("COMPLETE val_macro_f1 " in ln and "after 6 epoch(s)" in ln for ln in lines)
    summaries = [ln for ln in result.output.splitlines() if "; elapsed " in ln]
    assert summaries and any("; trial 2 at epoch " in ln and "/6" in ln for ln in summaries)


def test_a_long_decode_logs_where_it_stands_when_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A study's teacher views ran 16–23 minutes on 2 cores and a log showed nothing of them:
    a split that decodes for longer than SUMMARY_EVERY_S logs a line that often; a short one
    (every test's) none."""
    import io

    from rich.console import Console

    from carbrand_search import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    console = Console(file=out, width=120)
    run = progress.RichRunProgress(console, console, "demo", "val_macro_f1", 4)
    for t, done in [(0, 10), (30, 30), (61, 61), (90, 90), (122, 100)]:
        now[0] = float(t)
        run.decoding("teacher views", done, 100)
    run.decoding("train", 5, 50)  # a new split starts its own clock
    assert out.getvalue().splitlines() == [
        "demo: teacher views 61/100 (61%)",
        "demo: teacher views 100/100 (100%)",
    ]


def test_version_a_help_for_users_and_flags_shown_as_flags() -> None:
    from importlib.metadata import version

    shown = runner.invoke(app, ["--version"])
    assert (
        shown.exit_code == 0
        and shown.output.strip() == f"carbrand-search {version('carbrand-search')}"
    )
    top = runner.invoke(app, ["--help"])
    assert "car brands" in top.output and "parse, call one function" not in top.output
    flags = runner.invoke(app, ["data", "check", "--help"])
    assert "--skip-bad" in flags.output and "<bool>" not in flags.output


@pytest.mark.parametrize(
    "args", [["worker", "cnn-demo"], ["status", "cnn-demo"], ["studies"], ["report", "cnn-demo"]]
)
def test_a_study_looked_up_where_no_storage_is_leaves_no_empty_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """`worker NAME` typed as `create` printed it left an empty carbrand-search.db behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CARBRAND_STORAGE", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert (
        "carbrand-search.db does not exist" in result.output and "Traceback" not in result.output
    )
    assert not (tmp_path / "carbrand-search.db").exists()


def test_create_prints_the_whole_worker_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    created = runner.invoke(app, ["create", "cnn-demo", "--storage", url])
    assert created.exit_code == 0, created.output
    assert f"carbrand-search worker cnn-demo --storage {url}" in created.output


def test_a_local_studies_folder_adds_to_the_shipped_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ./studies folder hid every shipped study, although the search order fell back to them."""
    from carbrand_search.search.spec import SHIPPED_STUDIES, available_studies, find_study

    monkeypatch.delenv("CARBRAND_STUDIES", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.toml").write_text(
        (SHIPPED_STUDIES / "cnn-demo.toml").read_text()
    )
    assert find_study("mine") == Path("studies/mine.toml")
    assert find_study("cnn-demo") == SHIPPED_STUDIES / "cnn-demo.toml"
    assert {"mine", "cnn-demo"} <= set(available_studies())


def test_status_and_studies_name_the_metric(done: Done) -> None:
    shown = runner.invoke(app, ["status", "tiny", "--storage", done.url])
    assert shown.exit_code == 0 and "┃ val_macro_f1" in shown.output
    assert "best val_macro_f1 " in shown.output
    listed = runner.invoke(app, ["studies", "--storage", done.url])
    assert "best val_macro_f1 " in listed.output
    assert optuna.load_study(study_name="tiny", storage=done.url).metric_names == ["val_macro_f1"]


def test_a_narrow_status_keeps_each_trial_short(done: Done) -> None:
    """At 80 columns each trial wrapped over about 12 lines: the parameters go below the table."""
    from rich.console import Console

    from carbrand_search.progress import status_params, status_table

    found = load(done.url).get_trials()
    console = Console(width=80, record=True)
    console.print(status_table("tiny", found, "val_macro_f1", width=80))
    rows = [line for line in console.export_text().splitlines() if line.startswith("│ ")]
    assert len(rows) <= 2 * len(found)  # a trial is one or two lines
    assert [line.split(":")[0] for line in status_params(found)] == [f"#{t.number}" for t in found]


def test_the_live_view_shows_time_epochs_and_why_trials_were_pruned() -> None:
    from rich.console import Console

    from carbrand_search.progress import RunClock, live_view

    study = optuna.create_study(direction="maximize")
    pruned = study.ask()
    pruned.set_user_attr(
        "epochs", [epoch_metrics(epoch=e, val_macro_f1=e / 100 + 0.01).to_dict() for e in (1, 2)]
    )
    pruned.set_user_attr("prune_reason", {"rule": "one-class", "epoch": 2})
    study.tell(pruned, state=TrialState.PRUNED)
    done = study.ask()
    study.tell(done, 0.5)
    running = study.ask()
    running.set_user_attr("epoch", 2)
    clock = RunClock(started=0.0, finished_before=0)  # monotonic 0: long ago
    console = Console(width=200, record=True)
    console.print(live_view("s", study.get_trials(), 6, "val_macro_f1", 3, clock))
    text = console.export_text()
    assert "elapsed" in text and "ETA" in text
    assert "rule=one-class, epoch=2" in text and "2/3" in text and "PRUNED" in text
