"""The commands that read what a search stored: `report`, `compare`, `dashboard`, `predict`."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from carbrand_search.cli.app import (
    EXIT_BAD_FILES,
    FlagCommand,
    app,
    console,
    error_line,
    reports_errors,
)
from carbrand_search.cli.options import (
    ArtifactsOpt,
    CacheOpt,
    ReplaceOpt,
    StorageOpt,
    StoredDataOpt,
)
from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError
from carbrand_search.core.terminal import one_line

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
    force: ReplaceOpt = False,
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
    force: ReplaceOpt = False,
    storage: StorageOpt = defaults.STORAGE,
    artifacts: ArtifactsOpt = defaults.ARTIFACTS,
    data: StoredDataOpt = None,
    cache_dir: CacheOpt = None,
    tta: TtaOpt = False,
) -> None:
    """One table across studies: model, teacher, val and test accuracy, macro-F1, the most
    predicted make's share of predictions and of the images, matrix pattern, trials."""
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
