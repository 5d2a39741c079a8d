"""`carbrand-search data …`: make, import, split and check image datasets."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from carbrand_search.cli.app import (
    FlagCommand,
    console,
    data_app,
    reports_errors,
)
from carbrand_search.cli.options import (
    SkipBadOpt,
)
from carbrand_search.core.errors import UserError
from carbrand_search.core.terminal import tagged

if TYPE_CHECKING:
    from carbrand_search.data.ingest import IngestReport


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
