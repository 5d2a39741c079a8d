"""The Typer app every command registers on: its help, the version option, the consoles, exit
codes, and the one rule that turns a UserError into one line and exit code 2."""

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from carbrand_search.core.errors import UserError
from carbrand_search.core.process import exit_now
from carbrand_search.core.terminal import PlainConsole, tagged

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
