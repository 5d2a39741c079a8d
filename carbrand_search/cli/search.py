"""The commands that train and search: `train` one configuration; `run`, `create` and `worker`
a study; `status` and `studies` to watch them; `proxy` for workers on many machines."""

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from carbrand_search.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_SHORT_OF_BUDGET,
    FlagCommand,
    app,
    console,
    err_console,
    error_line,
    reports_errors,
)
from carbrand_search.cli.options import (
    ArtifactsOpt,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    HeartbeatOpt,
    NameOpt,
    SetOpt,
    SkipBadOpt,
    StorageOpt,
    StudyArg,
)
from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.core.terminal import tagged

STATUS_ROWS = 50  # trials in `status`'s table unless --all


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
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for torch in each worker (default: the cores split evenly). Two "
            "studies side by side on one machine: --threads 1 each on 2 cores."
        ),
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
        from carbrand_search.search.outage import WorkerStopped
        from carbrand_search.search.runner import run_study

        options = RunOptions(
            storage=storage, artifacts=artifacts, data=data, cache=cache_dir, device=device,
            heartbeat_s=heartbeat, skip_bad=skip_bad,
        )  # fmt: skip
        launch = LaunchOptions(
            workers=workers, workers_per_gpu=workers_per_gpu, threads=threads,
            n_trials=n_trials, warm_from=from_study, warm_top=top,
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
    from carbrand_search.search.outage import WorkerStopped
    from carbrand_search.search.runner import join_study
    from carbrand_search.search.study import open_study, stored_spec

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
        bool,
        typer.Option(
            "--all", help=f"Every trial, not only the last {STATUS_ROWS} and the running."
        ),
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
