"""The `carbrand-search` command line: each command parses its options, calls one function of the
package and prints what it returned."""

import functools
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.core.process import exit_now
from carbrand_search.core.terminal import PlainConsole, one_line, tagged

if TYPE_CHECKING:
    from carbrand_search.data.ingest import IngestReport

HELP = (
    "Find and train image classifiers that tell car brands apart: Optuna searches over the "
    "settings in a study file, on GPUs or the CPU, with reports, a dashboard and predictions. "
    "Start with `carbrand-search data demo demo-data`, then `carbrand-search run cnn-demo`."
)


class _FlagsWithoutType:
    """Typer's help shows `<bool>` after a flag, as if it took a value; a flag takes none."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_bool_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class FlagCommand(_FlagsWithoutType, TyperCommand):
    """Every command of the app: flags shown as flags."""


class FlagGroup(_FlagsWithoutType, TyperGroup):
    """The app and `data`: flags shown as flags."""


app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=HELP, cls=FlagGroup)
data_app = typer.Typer(
    no_args_is_help=True, help="Create, validate and summarise image datasets.", cls=FlagGroup
)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"carbrand-search {version('carbrand-search')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The options before any command."""


console = PlainConsole(soft_wrap=True)
err_console = PlainConsole(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 0 done; 1 some input files unreadable (predict); 2 bad input (UserError);
# 3 the search stopped before its budget (workers failed); 130 interrupted (Ctrl-C, SIGTERM).
EXIT_BAD_FILES, EXIT_USER_ERROR, EXIT_SHORT_OF_BUDGET, EXIT_INTERRUPTED = 1, 2, 3, 130
STATUS_ROWS = 50  # trials in `status`'s table unless --all


def main() -> None:
    """The `carbrand-search` command (and `python -m carbrand_search`)."""
    try:
        app(prog_name="carbrand-search")
    except SystemExit as stop:
        exit_now(stop.code)
    exit_now(0)


def error_line(message: str) -> None:
    err_console.print(tagged("error:", "red", message), soft_wrap=True)


def reports_errors(command: F) -> F:
    """Turn a UserError into one red line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            error_line(str(e))
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


StudyArg = Annotated[str, typer.Argument(help="Study name in studies/ or a path to a .toml file.")]
DeviceOpt = Annotated[str, typer.Option(help=defaults.DEVICE_NAMES + ".")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting: key=value, e.g. train.epochs=2 (repeatable)."),
]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data", envvar="CARBRAND_DATA", help="ImageFolder root with train/ val/ test/."
    ),
]
StoredDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        envvar="CARBRAND_DATA",
        help="ImageFolder root with train/ val/ test/ (default: where the study's run read it).",
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Decoded-image cache (default ~/.cache/carbrand-search)."),
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Skip and count unreadable images instead of failing.")
]


@data_app.command("demo", cls=FlagCommand)
@reports_errors
def data_demo(
    folder: Annotated[
        Path, typer.Argument(help="Where to write the demo dataset (new or empty).")
    ],
    classes: int = typer.Option(8, help="Number of brands."),
    per_class: int = typer.Option(60, help="Images per brand, split 70/15/15."),
    size: int = typer.Option(128, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a small synthetic car-brand dataset (train/val/test) to try everything on a CPU."""
    from carbrand_search.data.demo import DemoSpec, write_demo

    counts, written = write_demo(folder, DemoSpec(classes, per_class, size, seed))
    console.print(
        f"{'wrote' if written else 'already there:'} {sum(counts.values())} images of {classes} "
        f"brands in {folder} (train {counts['train']}, val {counts['val']}, test {counts['test']})"
    )


def check_and_print(folder: Path, skip_bad: bool) -> None:
    """Validate a dataset and print the `data check` summary (also ends every ingest command)."""
    from carbrand_search.data.imagefolder import check_dataset

    checked = check_dataset(folder, skip_bad)
    summaries = checked.summaries
    table = Table(title=f"{folder}: {len(checked.tree.classes)} classes")
    table.add_column("class")
    for split in summaries:
        table.add_column(split, justify="right")
    for cls in checked.tree.classes:
        table.add_row(cls, *(str(s.per_class[cls]) for s in summaries.values()))
    table.add_section()
    table.add_row("total", *(str(s.total) for s in summaries.values()))
    table.add_row("bad files", *(str(len(s.bad)) for s in summaries.values()))
    table.add_row("balance (min/max)", *(f"{s.balance:.2f}" for s in summaries.values()))
    table.add_row(
        "smallest image",
        *(f"{s.min_size[0]}×{s.min_size[1]}" for s in summaries.values() if s.min_size),
    )
    table.add_row(
        "largest image",
        *(f"{s.max_size[0]}×{s.max_size[1]}" for s in summaries.values() if s.max_size),
    )
    console.print(table)
    if clutter := checked.tree.clutter_line():
        console.print(clutter)
    for s in summaries.values():
        for bad in s.bad:
            console.print(tagged("skipped:", "yellow", str(bad)))
    for leak in checked.leaks:
        console.print(
            tagged(
                "warning:",
                "yellow",
                f"{leak.count} image(s) in {leak.later}/ have the same bytes as images in "
                f"{leak.earlier}/ (leakage: evaluation sees training images)",
            )
        )
    console.print(tagged("ok:", "green", f"{folder} is a valid dataset"))


@data_app.command("check", cls=FlagCommand)
@reports_errors
def data_check(
    folder: Annotated[Path, typer.Argument(help="ImageFolder root with train/ val/ test/.")],
    skip_bad: SkipBadOpt = False,
) -> None:
    """Validate a dataset and print images per split per class, sizes, bad files and balance."""
    check_and_print(folder, skip_bad)


SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ForceOpt = Annotated[bool, typer.Option(help="Replace a non-empty DST.")]
MinPerClassOpt = Annotated[int, typer.Option(help="Drop classes with fewer images.")]
DstArg = Annotated[Path, typer.Argument(help="New train/ val/ test/ tree.")]


def finish_ingest(report: "IngestReport", dst: Path) -> None:
    """What an ingest command did (counts, links/copies, skips, dropped classes), then `check`."""
    totals = {split: sum(c.values()) for split, c in report.counts.items()}
    console.print(
        f"wrote train {totals['train']}, val {totals['val']}, test {totals['test']} images "
        f"({report.linked} hard-linked, {report.copied} copied)"
    )
    for make, count in sorted(report.dropped_classes.items()):
        console.print(
            f"dropped class {make}: {count} images, below --min-per-class", highlight=False
        )
    for line in report.skipped:
        console.print(tagged("skipped:", "yellow", line))
    if report.clutter:
        console.print(f"skipped {report.clutter} file(s) that are not images in the source")
    check_and_print(dst, skip_bad=False)


@data_app.command("split", cls=FlagCommand)
@reports_errors
def data_split(
    src: Annotated[Path, typer.Argument(help="One folder per brand, no splits (never modified).")],
    dst: DstArg,
    val: Annotated[float, typer.Option(help="Share of each brand for val.")] = 0.15,
    test: Annotated[float, typer.Option(help="Share of each brand for test.")] = 0.15,
    seed: SeedOpt = 0,
    min_per_class: MinPerClassOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Split a flat brand-folder tree: stratified, seeded, duplicates kept in one split."""
    from carbrand_search.data.ingest import split_flat

    report = split_flat(
        src, dst, val=val, test=test, seed=seed, force=force, min_per_class=min_per_class
    )
    finish_ingest(report, dst)


@data_app.command("import-stanford-cars", cls=FlagCommand)
@reports_errors
def data_import_stanford(
    src: Annotated[Path, typer.Argument(help="Stanford Cars download (devkit + image folders).")],
    dst: DstArg,
    min_per_class: MinPerClassOpt = 0,
    crop: Annotated[bool, typer.Option(help="Crop each photo to its annotated box.")] = False,
    val: Annotated[float, typer.Option(help="Share of train carved out for val.")] = 0.15,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Stanford Cars (196 model classes) → car makes, with train/val/test splits."""
    from carbrand_search.data.ingest import import_stanford_cars

    report = import_stanford_cars(
        src, dst, min_per_class=min_per_class, crop=crop, val=val, seed=seed, force=force
    )
    finish_ingest(report, dst)


@data_app.command("download", cls=FlagCommand)
@reports_errors
def data_download(
    source: Annotated[str, typer.Argument(help="Where from: kaggle.")],
    dataset: Annotated[str, typer.Argument(help="OWNER/DATASET on Kaggle.")],
    dst: DstArg,
    force: ForceOpt = False,
) -> None:
    """Download a dataset (Kaggle, via kagglehub) and link its train/val/test folders into DST."""
    from carbrand_search.data.ingest import download_kaggle

    if source != "kaggle":
        raise UserError(f"unknown source {source!r}; supported: kaggle")
    finish_ingest(download_kaggle(dataset, dst, force=force), dst)


@app.command("train", cls=FlagCommand)
@reports_errors
def train(
    study: StudyArg,
    data: DataOpt = defaults.DATA,
    overrides: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<study>/<time>).")
    ] = None,
    device: DeviceOpt = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (default: all).")
    ] = None,
    cache_dir: CacheOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Train one configuration of a study: the space's defaults plus --set overrides."""
    import torch

    from carbrand_search.data.cache import default_cache_root
    from carbrand_search.progress import CacheProgress, RichTrainListener
    from carbrand_search.search.spec import apply_overrides, load_spec
    from carbrand_search.training.device import resolve_device
    from carbrand_search.training.fit import fit
    from carbrand_search.training.outputs import prepare_out_dir, save_run
    from carbrand_search.training.parts import load_training_data, new_model

    spec = load_spec(study)
    config = apply_overrides(spec.resolve(spec.defaults()), overrides or [])
    if config.distill.on:
        raise UserError(
            f"{spec.path}: distill.teacher names a study in a storage, which `train` does not "
            "open; run the study with `carbrand-search run`"
        )
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch_device = resolve_device(device)
    out = out or Path("runs") / spec.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    prepare_out_dir(out)
    with CacheProgress(console) as progress:
        loaded = load_training_data(
            data, config.data, cache_dir or default_cache_root(), torch_device,
            skip_bad=skip_bad, on_progress=progress,
        )  # fmt: skip
    console.print(
        f"{spec.name}: {config.model.name} on {len(loaded.tree.classes)} classes, "
        f"{len(loaded.train)} train / {len(loaded.val)} val images, device {torch_device}"
        + (f", {len(loaded.skipped)} bad files skipped" if loaded.skipped else "")
    )
    if clutter := loaded.tree.clutter_line():
        console.print(clutter)
    listener = RichTrainListener(console, config.train.monitor)
    result = fit(new_model(config, len(loaded.tree.classes)), loaded, config, listener)
    save_run(out, spec.text, config, loaded.tree.classes, result)
    best = result.best
    console.print(
        f"best epoch {result.best_epoch}: val acc {best.val_accuracy:.3f}, "
        f"macro-F1 {best.val_macro_f1:.3f}; wrote {out}"
    )


StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="CARBRAND_STORAGE",
        help="sqlite:///FILE, postgresql+psycopg://…, journal:///FILE, or grpc://HOST:PORT "
        "(a `carbrand-search proxy`).",
    ),
]
ArtifactsOpt = Annotated[
    str,
    typer.Option(
        "--artifacts", envvar="CARBRAND_ARTIFACTS", help="Artifact folder, or s3://BUCKET."
    ),
]
HeartbeatOpt = Annotated[
    int,
    typer.Option(
        "--heartbeat",
        help="Seconds between trial heartbeats (RDB storages); a trial silent for "
        f"{defaults.GRACE_FACTOR} of them is failed and retried. Keep it well under an epoch's "
        "time.",
    ),
]


NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name", help="Store the study under this name (default: the study file's name)."
    ),
]


@app.command("run", cls=FlagCommand)
@reports_errors
def run(
    study: StudyArg,
    name: NameOpt = None,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    n_trials: Annotated[
        int | None, typer.Option(help="Total trial budget (default: the study file's).")
    ] = None,
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    data: DataOpt = defaults.DATA,
    device: DeviceOpt = "auto",
    workers_per_gpu: Annotated[
        int | None,
        typer.Option(help="At most this many trials on one GPU (default: spread, no limit)."),
    ] = None,
    heartbeat: HeartbeatOpt = defaults.HEARTBEAT_S,
    cache_dir: CacheOpt = None,
    skip_bad: SkipBadOpt = False,
    from_study: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Warm start: queue the best parameter sets of this study (same storage) that "
            "fit this study's space.",
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="How many of --from's best trials to queue.")] = 3,
    overrides: SetOpt = None,
) -> None:
    """Create or resume a study; N parallel workers optimise it until its budget is met.
    --set fixes a setting for every trial; it becomes part of the stored study."""
    from carbrand_search.search.prestart import WaitingWorkers
    from carbrand_search.search.spec import load_spec, renamed, with_overrides

    spec = renamed(with_overrides(load_spec(study), overrides or []), name)
    # The workers import torch and the trainer while this process imports and checks the rest;
    # no more than the cores at first (the rest start once the checks pass).
    waiting = WaitingWorkers.spawn(min(workers, os.cpu_count() or 1))
    try:
        from carbrand_search.progress import RichRunProgress, trials_line
        from carbrand_search.search.options import LaunchOptions, RunOptions
        from carbrand_search.search.runner import run_study
        from carbrand_search.search.worker import WorkerStopped

        options = RunOptions(
            storage=storage, artifacts=artifacts, data=data, cache=cache_dir, device=device,
            heartbeat_s=heartbeat, skip_bad=skip_bad,
        )  # fmt: skip
        launch = LaunchOptions(
            workers=workers, workers_per_gpu=workers_per_gpu, n_trials=n_trials,
            warm_from=from_study, warm_top=top,
        )  # fmt: skip
        monitor = spec.base.train.monitor
        epochs = spec.base.train.epochs
        with RichRunProgress(console, err_console, spec.name, monitor, epochs) as progress:
            outcome = run_study(spec, options, launch, progress, waiting)
    except WorkerStopped as e:  # the database stayed away for longer than `run` waits
        error_line(f"{spec.name}: {e}; `run` again to resume")
        raise typer.Exit(EXIT_SHORT_OF_BUDGET) from None
    finally:
        waiting.cancel()
    if outcome.nothing_to_do:
        console.print(
            f"{spec.name}: already finished ({outcome.finished}/{outcome.budget} trials); "
            "nothing to do"
        )
        return
    if outcome.interrupted:
        err_console.print("interrupted: running trials marked FAIL; `run` again to resume")
        raise typer.Exit(EXIT_INTERRUPTED)
    console.print(trials_line(spec.name, outcome.trials, outcome.budget, monitor))
    if not outcome.budget_met:
        error_line(
            f"{spec.name}: stopped short of its budget; worker exit codes "
            f"{outcome.crashed or 'all 0'}; `run` again to resume"
        )
        raise typer.Exit(EXIT_SHORT_OF_BUDGET)
    if outcome.crashed:
        err_console.print(
            tagged("warning:", "yellow", f"worker exit codes {outcome.crashed}; budget met")
        )


@app.command("create", cls=FlagCommand)
@reports_errors
def create(
    study: StudyArg,
    n_trials: Annotated[
        int | None, typer.Option(help="Total trial budget (default: the study file's).")
    ] = None,
    storage: StorageOpt = defaults.STORAGE,
    overrides: SetOpt = None,
    name: NameOpt = None,
) -> None:
    """Create a study (or check an existing one) without running trials; workers join later."""
    from carbrand_search.search.spec import load_spec, renamed, with_overrides
    from carbrand_search.search.storage import mask, open_storage
    from carbrand_search.search.study import budget, ensure_study

    spec = renamed(with_overrides(load_spec(study), overrides or []), name)
    created = ensure_study(spec, open_storage(storage), n_trials)
    console.print(
        f"study '{spec.name}' ready in {mask(storage)}: budget {budget(created)} "
        f"trials, {len(created.trials)} so far; start workers with `carbrand-search worker "
        f"{spec.name} --storage {mask(storage)}` (with --data and --artifacts where they are "
        "not the defaults)"
    )


@app.command("worker", cls=FlagCommand)
@reports_errors
def worker(
    study: Annotated[str, typer.Argument(help="Name of a study created by `run`.")],
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    data: DataOpt = defaults.DATA,
    device: DeviceOpt = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    heartbeat: HeartbeatOpt = defaults.HEARTBEAT_S,
    cache_dir: CacheOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Join an existing study from this machine and run trials until its budget is met."""
    from carbrand_search.progress import RichRunProgress
    from carbrand_search.search.options import RunOptions
    from carbrand_search.search.runner import join_study
    from carbrand_search.search.study import open_study, stored_spec
    from carbrand_search.search.worker import WorkerStopped

    options = RunOptions(
        storage=storage, artifacts=artifacts, data=data, cache=cache_dir, device=device,
        heartbeat_s=heartbeat, skip_bad=skip_bad,
    )  # fmt: skip
    base = stored_spec(open_study(study, storage)).base
    try:
        with RichRunProgress(
            console, err_console, study, base.train.monitor, base.train.epochs
        ) as progress:
            join_study(study, options, threads, progress)
    except WorkerStopped as e:
        error_line(f"worker: {e}")
        raise typer.Exit(EXIT_SHORT_OF_BUDGET) from None


@app.command("status", cls=FlagCommand)
@reports_errors
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    all_trials: Annotated[
        bool, typer.Option("--all", help="Every trial, not only the last 50 and the running.")
    ] = False,
) -> None:
    """Print the trials table (state, value, key params, duration, prune reason) and a summary."""
    from carbrand_search.progress import WIDE, status_params, status_table, study_line
    from carbrand_search.search.storage import mask, open_storage, store_size
    from carbrand_search.search.study import budget, metric_name, open_study
    from carbrand_search.search.views import overview

    optuna_study = open_study(study, storage)
    # Read only what is shown: at 5,000 trials, loading every one takes seconds (bench/RESULTS.md).
    view = overview(open_storage(storage), study, None if all_trials else STATUS_ROWS)
    title = f"{study} ({mask(storage)})"
    total = sum(view.counts.values())
    if len(view.shown) < total:
        title += f": the last {STATUS_ROWS} of {total} trials and every running one (--all: all)"
    measures = metric_name(optuna_study)
    console.print(status_table(title, view.shown, measures, console.width))
    if console.width < WIDE:
        for line in status_params(view.shown):
            console.print(line, highlight=False)
    console.print(
        study_line(study, view.counts, budget(optuna_study, default=total), view.best, measures)
    )
    try:
        files, size = store_size(artifacts)
    except Exception as e:  # an unreachable bucket must not hide the trials table
        console.print(f"artifacts at {artifacts}: size unknown ({first_line(e, 200)})")
    else:
        console.print(f"artifacts: {size / 2**20:.1f} MB in {files} files at {artifacts}")


@app.command("studies", cls=FlagCommand)
@reports_errors
def studies(storage: StorageOpt = defaults.STORAGE) -> None:
    """List the studies in a storage with their trial counts."""
    import optuna

    from carbrand_search.search.storage import open_existing
    from carbrand_search.search.study import metric_name

    store = open_existing(storage)
    for summary in optuna.get_all_study_summaries(store):
        measures = metric_name(optuna.load_study(study_name=summary.study_name, storage=store))
        best = f", best {measures} {summary.best_trial.value:.4f}" if summary.best_trial else ""
        console.print(f"{summary.study_name}: {summary.n_trials} trials{best}")


TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta", help="Test-time augmentation: average each image's and its mirror's prediction."
    ),
]


@app.command("report", cls=FlagCommand)
@reports_errors
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default reports/<study>).")
    ] = None,
    top: Annotated[int, typer.Option(help="Report the best K complete trials.")] = 1,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    data: StoredDataOpt = None,
    cache_dir: CacheOpt = None,
    tta: TtaOpt = False,
) -> None:
    """Evaluate the best trial(s) on the test split; write report.html, report.md, report.json."""
    import time

    from carbrand_search.reports.report import build_report
    from carbrand_search.search.storage import artifact_store, mask
    from carbrand_search.search.study import image_source, open_study

    if top < 1:
        raise UserError("--top must be >= 1")
    start = time.perf_counter()
    folder = out or Path("reports") / study
    optuna_study = open_study(study, storage)
    result = build_report(
        optuna_study, artifacts=artifact_store(artifacts),
        images=image_source(optuna_study, data, cache_dir), out=folder, top=top, force=force,
        storage_label=mask(storage), tta=tta,
    )  # fmt: skip
    best = result.trials[0]
    console.print(
        f"{study}: best trial {best.number}: test accuracy {best.test.accuracy:.4f}, "
        f"macro-F1 {best.test.macro_f1:.4f}; {best.test.verdict.text}"
    )
    console.print(
        f"wrote {folder}/report.html, report.md, report.json in {time.perf_counter() - start:.1f}s"
    )


@app.command("compare", cls=FlagCommand)
@reports_errors
def compare(
    studies: Annotated[list[str], typer.Argument(help="Study names.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/compare"),
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    data: StoredDataOpt = None,
    cache_dir: CacheOpt = None,
    tta: TtaOpt = False,
) -> None:
    """One table across studies: model, teacher, val and test accuracy, macro-F1, the most
    predicted make's share, matrix pattern, trials."""
    from carbrand_search.reports.compare import compare_studies
    from carbrand_search.search.storage import artifact_store
    from carbrand_search.search.study import open_study

    rows = compare_studies(
        [open_study(name, storage) for name in studies], artifacts=artifact_store(artifacts),
        data=data, cache=cache_dir, out=out, force=force, tta=tta,
    )  # fmt: skip
    table = Table(title="studies compared")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"wrote {out}/compare.md and compare.json")


@app.command("dashboard", cls=FlagCommand)
@reports_errors
def dashboard(
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    host: Annotated[
        str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Start optuna-dashboard on the same storage and artifact store."""
    from carbrand_search.core.network import check_port
    from carbrand_search.reports.dashboard import serve

    check_port(port)
    from carbrand_search.search.storage import artifact_store, mask, open_existing

    store = open_existing(storage)
    console.print(
        f"optuna-dashboard for {mask(storage)} at http://{host}:{port}/dashboard (Ctrl-C stops)"
    )
    serve(store, artifact_store(artifacts), host, port)


@app.command("proxy", cls=FlagCommand)
@reports_errors
def proxy(
    storage: StorageOpt = defaults.STORAGE,
    host: Annotated[
        str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = defaults.PROXY_PORT,
    heartbeat: HeartbeatOpt = defaults.HEARTBEAT_S,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Listen beyond loopback (needs CARBRAND_PROXY_TOKEN; the channel has no TLS).",
        ),
    ] = False,
) -> None:
    """Serve the storage to workers through Optuna's gRPC proxy (grpc://HOST:PORT): one set of
    database connections for many workers; it also fails and re-queues their dead trials."""
    from carbrand_search.core.process import stop_once, stop_signals
    from carbrand_search.search.proxy import ProxyOptions, serve

    options = ProxyOptions(storage, host, port, heartbeat, allow_remote)
    with stop_once(*stop_signals()):  # SIGTERM (a pod's stop) ends it as cleanly as Ctrl-C
        try:
            serve(options, console.print)
        except KeyboardInterrupt:
            console.print("proxy stopped")


@app.command("predict", cls=FlagCommand)
@reports_errors
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    study: Annotated[str, typer.Option(help="Study whose best trial predicts.")],
    trial: Annotated[int | None, typer.Option(help="A trial number instead of the best.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Brands listed per image.")] = 3,
    cam: Annotated[
        Path | None, typer.Option(help="Write a Grad-CAM overlay per image here.")
    ] = None,
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
) -> None:
    """Top-k brands with probabilities for each image, from a study's best (or chosen) trial."""
    from carbrand_search.reports.predict import choose_trial, predict_files
    from carbrand_search.search.storage import artifact_store
    from carbrand_search.search.study import open_study
    from carbrand_search.search.trained import load_trial_model

    optuna_study = open_study(study, storage)
    chosen = choose_trial(optuna_study, trial)
    tm = load_trial_model(optuna_study, chosen, artifact_store(artifacts))
    predictions, bad = predict_files(tm, images, top_k, cam)
    for p in predictions:
        ranked = ", ".join(f"{one_line(brand)} {prob:.3f}" for brand, prob in p.top)
        shown_cam = f"  (CAM {one_line(str(p.cam))})" if p.cam else ""
        console.print(f"{one_line(str(p.path))}: {ranked}{shown_cam}", highlight=False)
    for error in bad:
        error_line(str(error))
    if bad:
        raise typer.Exit(EXIT_BAD_FILES)
