"""The options and arguments several commands share, each defined once."""

from pathlib import Path
from typing import Annotated

import typer

from carbrand_search.core import defaults

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
ReplaceOpt = Annotated[bool, typer.Option(help="Replace a non-empty output folder.")]
