"""The `carbrand-search` command line: parse, call one function, print."""

import functools
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from carbrand_search.core.errors import UserError
from carbrand_search.core.terminal import PlainConsole, tagged

if TYPE_CHECKING:
    import optuna

    from carbrand_search.search.spec import StudySpec

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Create, validate and summarise image datasets.")
app.add_typer(data_app, name="data")
console = PlainConsole(soft_wrap=True)
err_console = PlainConsole(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a UserError into one red line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            err_console.print(tagged("error:", "red", str(e)), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


StudyArg = Annotated[str, typer.Argument(help="Study name in studies/ or a path to a .toml file.")]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data", envvar="CARBRAND_DATA", help="ImageFolder root with train/ val/ test/."
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Decoded-image cache (default ~/.cache/carbrand-search)."),
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Skip and count unreadable images instead of failing.")
]


@data_app.command("demo")
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
    from carbrand_search.data.imagefolder import cross_split_duplicates, inspect, scan

    tree = scan(folder)
    summaries = inspect(tree, skip_bad)
    table = Table(title=f"{folder}: {len(tree.classes)} classes")
    table.add_column("class")
    for split in summaries:
        table.add_column(split, justify="right")
    for cls in tree.classes:
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
    for s in summaries.values():
        for bad in s.bad:
            console.print(tagged("skipped:", "yellow", str(bad)))
    for pair, count in cross_split_duplicates(tree).items():
        first, second = pair.split("/")
        console.print(
            tagged(
                "warning:",
                "yellow",
                f"{count} image(s) in {second}/ have the same bytes as images in {first}/ "
                "(leakage: evaluation sees training images)",
            )
        )
    console.print(tagged("ok:", "green", f"{folder} is a valid dataset"))


@data_app.command("check")
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


def finish_ingest(report: Any, dst: Path) -> None:
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
    check_and_print(dst, skip_bad=False)


@data_app.command("split")
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

    finish_ingest(split_flat(src, dst, val, test, seed, force, min_per_class), dst)


@data_app.command("import-stanford-cars")
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

    finish_ingest(import_stanford_cars(src, dst, min_per_class, crop, val, seed, force), dst)


@data_app.command("download")
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
    finish_ingest(download_kaggle(dataset, dst, force), dst)


@app.command("train")
@reports_errors
def train(
    study: StudyArg,
    data: DataOpt = Path("demo-data"),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<study>/<time>).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
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
    from carbrand_search.training.fit import pick_device
    from carbrand_search.training.run import (
        load_training_data,
        prepare_out_dir,
        save_run,
        train_config,
    )

    spec = load_spec(study)
    config = apply_overrides(spec.resolve(spec.defaults()), overrides or [])
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        torch_device = pick_device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device}: {e}") from e
    out = out or Path("runs") / spec.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    prepare_out_dir(out)
    with CacheProgress(console) as progress:
        loaded = load_training_data(
            data, config.data, cache_dir or default_cache_root(), torch_device, skip_bad, progress
        )
    console.print(
        f"{spec.name}: {config.model.name} on {len(loaded.tree.classes)} classes, "
        f"{len(loaded.train)} train / {len(loaded.val)} val images, device {torch_device}"
        + (f", {len(loaded.skipped)} bad files skipped" if loaded.skipped else "")
    )
    listener = RichTrainListener(console, config.train.monitor)
    _, result = train_config(config, loaded, listener)
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
        help="sqlite:///FILE, postgresql+psycopg://… or journal:///FILE.",
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
        help="Seconds between trial heartbeats (RDB storages); a trial silent for 4 of them "
        "is failed and retried. Keep it well under an epoch's time.",
    ),
]


@app.command("run")
@reports_errors
def run(
    study: StudyArg,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    n_trials: Annotated[
        int | None, typer.Option(help="Total trial budget (default: the study file's).")
    ] = None,
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
    data: DataOpt = Path("demo-data"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workers_per_gpu: Annotated[int, typer.Option(help="Trials packed on one GPU.")] = 1,
    heartbeat: HeartbeatOpt = 15,
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
) -> None:
    """Create or resume a study; N parallel workers optimise it until its budget is met."""
    import signal
    import time

    import optuna
    from rich.live import Live

    from carbrand_search.data.cache import default_cache_root
    from carbrand_search.data.imagefolder import scan
    from carbrand_search.progress import CacheProgress, live_view, study_line
    from carbrand_search.search.launcher import (
        BUDGET_ATTR,
        FINISHED,
        WorkerPlan,
        count,
        ensure_study,
        plan_devices,
        start_workers,
        stop_workers,
    )
    from carbrand_search.search.spec import load_spec
    from carbrand_search.search.storage import artifact_store, mask, open_storage
    from carbrand_search.training.run import build_model, load_split

    if workers < 1 or workers_per_gpu < 1 or top < 1:
        raise UserError("--workers, --workers-per-gpu and --top must be >= 1")
    spec = load_spec(study)
    devices = plan_devices(device, workers, workers_per_gpu)
    cores = os.cpu_count() or 1
    if devices[0][0] == "cpu" and workers > cores:
        err_console.print(
            tagged(
                "warning:",
                "yellow",
                f"{workers} workers on {cores} CPU cores compete for them (measured: 4 workers "
                "on 2 cores gave 0.91× the trials/hour of 1; bench/RESULTS.md)",
            )
        )
    cache = cache_dir or default_cache_root()
    tree = scan(data)  # bad data stops here, before the storage is touched
    build_model(spec.resolve(spec.defaults()), len(tree.classes))  # so do missing weights
    with CacheProgress(console) as progress:
        for split in ("train", "val"):
            load_split(tree, split, spec.base.data, cache, skip_bad, progress)
    artifact_store(artifacts)
    store = open_storage(storage, heartbeat)
    source = None
    if from_study is not None:
        try:
            source = optuna.load_study(study_name=from_study, storage=store)
        except KeyError:
            raise UserError(f"--from {from_study}: no such study in this storage") from None
    optuna_study = ensure_study(spec, store, n_trials)
    budget = int(optuna_study.user_attrs[BUDGET_ATTR])
    finished = count(optuna_study, *FINISHED)
    if finished >= budget:
        console.print(f"{spec.name}: already finished ({finished}/{budget} trials); nothing to do")
        return
    if source is not None:
        _warm_start(optuna_study, spec, source, top)
    console.print(
        f"{spec.name}: {budget - finished} trials to go with {workers} worker(s) on "
        f"{', '.join(sorted({d for d, _ in devices}))}; storage {mask(storage)}"
    )
    plans = [
        WorkerPlan(
            study=spec.name,
            storage=storage,
            artifacts=artifacts,
            data=str(data),
            cache=str(cache),
            device=dev,
            threads=threads,
            index=i,
            heartbeat_s=heartbeat,
            skip_bad=skip_bad,
        )
        for i, (dev, threads) in enumerate(devices)
    ]
    processes = start_workers(plans)

    def terminate(*_: Any) -> None:
        raise KeyboardInterrupt  # `kill`, `docker stop`: stop like Ctrl-C, never orphan workers

    signal.signal(signal.SIGTERM, terminate)

    def view() -> Any:
        trials = optuna_study.get_trials(deepcopy=False)
        return live_view(spec.name, trials, budget, spec.direction)

    try:
        with Live(view(), console=console, refresh_per_second=2, transient=True) as live:
            while any(p.is_alive() for p in processes):
                time.sleep(1)
                live.update(view())
    except KeyboardInterrupt:
        stop_workers(processes, optuna_study, store)
        err_console.print("interrupted: running trials marked FAIL; `run` again to resume")
        raise typer.Exit(130) from None
    stop_workers(processes, optuna_study, store)
    trials = optuna_study.get_trials(deepcopy=False)
    console.print(study_line(spec.name, trials, budget, spec.direction))
    crashed = [p.exitcode for p in processes if p.exitcode]
    if count(optuna_study, *FINISHED) < budget:
        raise UserError(
            f"{spec.name}: stopped short of its budget; worker exit codes {crashed or 'all 0'}; "
            "`run` again to resume"
        )
    if crashed:
        err_console.print(tagged("warning:", "yellow", f"worker exit codes {crashed}; budget met"))


def _warm_start(
    study: "optuna.Study", spec: "StudySpec", source: "optuna.Study", top: int
) -> None:
    """`run --from`: queue the other study's best fitting parameter sets and say which."""
    from carbrand_search.search.launcher import stored_spec
    from carbrand_search.search.warmstart import enqueue_from

    result = enqueue_from(study, spec, source, stored_spec(source), top)
    for number, reason in result.skipped:
        console.print(f"--from {source.study_name}: skipped trial {number}: {reason}")
    queued = ", ".join(str(n) for n in result.enqueued) or "none"
    console.print(f"--from {source.study_name}: queued trials {queued} as warm starts")


@app.command("create")
@reports_errors
def create(
    study: StudyArg,
    n_trials: Annotated[
        int | None, typer.Option(help="Total trial budget (default: the study file's).")
    ] = None,
    storage: StorageOpt = "sqlite:///carbrand-search.db",
) -> None:
    """Create a study (or check an existing one) without running trials; workers join later."""
    from carbrand_search.search.launcher import BUDGET_ATTR, ensure_study
    from carbrand_search.search.spec import load_spec
    from carbrand_search.search.storage import mask, open_storage

    spec = load_spec(study)
    created = ensure_study(spec, open_storage(storage), n_trials)
    console.print(
        f"study '{spec.name}' ready in {mask(storage)}: budget {created.user_attrs[BUDGET_ATTR]} "
        f"trials, {len(created.trials)} so far; start workers with `carbrand-search worker "
        f"{spec.name}`"
    )


@app.command("worker")
@reports_errors
def worker(
    study: Annotated[str, typer.Argument(help="Name of a study created by `run`.")],
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
    data: DataOpt = Path("demo-data"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    heartbeat: HeartbeatOpt = 15,
    cache_dir: CacheOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Join an existing study from this machine and run trials until its budget is met."""
    import optuna

    from carbrand_search.search.launcher import WorkerPlan, plan_devices, worker_main
    from carbrand_search.search.storage import mask, open_storage

    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
    if study not in names:
        raise UserError(
            f"no study '{study}' in {mask(storage)} (studies: {', '.join(names) or 'none'}); "
            "create it with `carbrand-search run`"
        )
    # One process here, so it may use every core; cuda:N picks a GPU explicitly.
    dev = device if device.startswith("cuda:") else plan_devices(device, 1, 1)[0][0]
    plan = WorkerPlan(
        study=study, storage=storage, artifacts=artifacts, data=str(data),
        cache=str(cache_dir or ""), device=dev, threads=threads or os.cpu_count() or 1,
        index=os.getpid(), heartbeat_s=heartbeat, skip_bad=skip_bad,
    )  # fmt: skip
    try:
        worker_main(plan)
    except SystemExit as e:
        if e.code:
            raise typer.Exit(int(e.code)) from None


@app.command("status")
@reports_errors
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "sqlite:///carbrand-search.db",
) -> None:
    """Print the trials table (state, value, key params, duration, prune reason) and a summary."""

    from carbrand_search.progress import format_params, short, study_line
    from carbrand_search.search.launcher import BUDGET_ATTR
    from carbrand_search.search.storage import mask

    optuna_study, _ = open_study(study, storage)
    trials = optuna_study.get_trials(deepcopy=False)
    table = Table(title=f"{study} ({mask(storage)})")
    for column in ("#", "state", "value", "params", "duration", "prune reason"):
        table.add_column(column)
    for t in trials:
        duration = f"{t.duration.total_seconds():.0f}s" if t.duration else ""
        reason = t.user_attrs.get("prune_reason")
        why = ", ".join(f"{k}={short(v)}" for k, v in reason.items()) if reason else ""
        params = format_params(t.params)
        value = f"{t.value:.4f}" if t.value is not None else ""
        table.add_row(str(t.number), t.state.name, value, params, duration, why)
    console.print(table)
    budget = int(optuna_study.user_attrs.get(BUDGET_ATTR, len(trials)))
    direction = optuna_study.direction.name.lower()
    console.print(study_line(study, trials, budget, direction))


@app.command("studies")
@reports_errors
def studies(storage: StorageOpt = "sqlite:///carbrand-search.db") -> None:
    """List the studies in a storage with their trial counts."""
    import optuna

    from carbrand_search.search.storage import open_storage

    for summary in optuna.get_all_study_summaries(open_storage(storage)):
        best = f", best {summary.best_trial.value:.4f}" if summary.best_trial else ""
        console.print(f"{summary.study_name}: {summary.n_trials} trials{best}")


def open_study(name: str, storage: str) -> tuple[Any, Any]:
    """(study, storage) for a study that must exist; a clear error otherwise."""
    import optuna

    from carbrand_search.search.storage import mask, open_storage

    store = open_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=store), store
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise UserError(
            f"no study '{name}' in {mask(storage)} (studies: {', '.join(names) or 'none'})"
        ) from None


@app.command("report")
@reports_errors
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default reports/<study>).")
    ] = None,
    top: Annotated[int, typer.Option(help="Report the best K complete trials.")] = 1,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
    data: DataOpt = Path("demo-data"),
    cache_dir: CacheOpt = None,
) -> None:
    """Evaluate the best trial(s) on the test split; write report.html, report.md, report.json."""
    import time

    from carbrand_search.data.cache import default_cache_root
    from carbrand_search.reports.report import build_report
    from carbrand_search.search.storage import artifact_store, mask

    if top < 1:
        raise UserError("--top must be >= 1")
    start = time.perf_counter()
    optuna_study, store = open_study(study, storage)
    folder = out or Path("reports") / study
    result = build_report(
        optuna_study, artifact_store(artifacts), data, cache_dir or default_cache_root(), folder,
        top, force, store, mask(storage),
    )  # fmt: skip
    best = result["trials"][0]
    console.print(
        f"{study}: best trial {best['number']}: test accuracy {best['test']['accuracy']:.4f}, "
        f"macro-F1 {best['test']['macro_f1']:.4f}; {best['test']['verdict']['text']}"
    )
    console.print(
        f"wrote {folder}/report.html, report.md, report.json in {time.perf_counter() - start:.1f}s"
    )


@app.command("compare")
@reports_errors
def compare(
    studies: Annotated[list[str], typer.Argument(help="Study names.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/compare"),
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
    data: DataOpt = Path("demo-data"),
    cache_dir: CacheOpt = None,
) -> None:
    """One table across studies: model, val acc, test acc, macro-F1, matrix pattern, trials."""
    from carbrand_search.data.cache import default_cache_root
    from carbrand_search.reports.compare import compare_rows, write_compare
    from carbrand_search.search.storage import artifact_store

    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"output folder {out} is not empty; pass --force to replace it")
    opened = [open_study(name, storage) for name in studies]
    rows = compare_rows(
        [s for s, _ in opened], artifact_store(artifacts), data, cache_dir or default_cache_root()
    )
    table = Table(title="studies compared")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    write_compare(rows, out)
    console.print(f"wrote {out}/compare.md and compare.json")


@app.command("dashboard")
@reports_errors
def dashboard(
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
    host: Annotated[
        str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Start optuna-dashboard on the same storage and artifact store."""
    import optuna_dashboard

    from carbrand_search.search.storage import artifact_store, mask, open_storage

    store = open_storage(storage)
    console.print(
        f"optuna-dashboard for {mask(storage)} at http://{host}:{port}/dashboard (Ctrl-C stops)"
    )
    optuna_dashboard.run_server(
        store, host=host, port=port, artifact_store=artifact_store(artifacts)
    )


@app.command("predict")
@reports_errors
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    study: Annotated[str, typer.Option(help="Study whose best trial predicts.")],
    trial: Annotated[int | None, typer.Option(help="A trial number instead of the best.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Brands listed per image.")] = 3,
    cam: Annotated[
        Path | None, typer.Option(help="Write a Grad-CAM overlay per image here.")
    ] = None,
    storage: StorageOpt = "sqlite:///carbrand-search.db",
    artifacts: ArtifactsOpt = "artifacts",
) -> None:
    """Top-k brands with probabilities for each image, from a study's best (or chosen) trial."""
    from carbrand_search.reports.evaluate import load_trial_model
    from carbrand_search.reports.predict import predict_files
    from carbrand_search.reports.report import ranked_trials
    from carbrand_search.search.storage import artifact_store

    optuna_study, _ = open_study(study, storage)
    if trial is None:
        chosen = ranked_trials(optuna_study)[0]
    else:
        numbers = {t.number: t for t in optuna_study.get_trials(deepcopy=False)}
        if trial not in numbers:
            raise UserError(f"--trial {trial}: no such trial in '{study}'")
        chosen = numbers[trial]
    tm = load_trial_model(optuna_study, chosen, artifact_store(artifacts))
    predictions, bad = predict_files(tm, images, top_k, cam)
    for p in predictions:
        ranked = ", ".join(f"{brand} {prob:.3f}" for brand, prob in p.top)
        console.print(
            f"{p.path}: {ranked}" + (f"  (CAM {p.cam})" if p.cam else ""), highlight=False
        )
    for error in bad:
        err_console.print(tagged("error:", "red", str(error)), soft_wrap=True)
    if bad:
        raise typer.Exit(1)
