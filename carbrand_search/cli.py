"""The `carbrand-search` command line: parse, call one function, print."""

import functools
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from carbrand_search.errors import UserError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Create, validate and summarise image datasets.")
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a UserError into one red line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


DataOpt = Annotated[Path, typer.Option("--data", help="ImageFolder root with train/ val/ test/.")]
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
    from carbrand_search.demo import DemoSpec, write_demo

    counts, written = write_demo(folder, DemoSpec(classes, per_class, size, seed))
    console.print(
        f"{'wrote' if written else 'already there:'} {sum(counts.values())} images of {classes} "
        f"brands in {folder} (train {counts['train']}, val {counts['val']}, test {counts['test']})"
    )


@data_app.command("check")
@reports_errors
def data_check(
    folder: Annotated[Path, typer.Argument(help="ImageFolder root with train/ val/ test/.")],
    skip_bad: SkipBadOpt = False,
) -> None:
    """Validate a dataset and print images per split per class, sizes, bad files and balance."""
    from carbrand_search.data import inspect, scan

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
            console.print(f"[yellow]skipped:[/] {bad}", highlight=False)
    console.print(f"[green]ok[/]: {folder} is a valid dataset")


@app.command("train")
@reports_errors
def train(
    study: Annotated[
        str, typer.Argument(help="Study name in studies/ or a path to a .toml file.")
    ],
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

    from carbrand_search.cache import default_cache_root
    from carbrand_search.job import load_training_data, prepare_out_dir, save_run, train_config
    from carbrand_search.progress import CacheProgress, RichTrainListener
    from carbrand_search.spec import apply_overrides, load_spec
    from carbrand_search.train import pick_device

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


def main() -> None:
    app()
