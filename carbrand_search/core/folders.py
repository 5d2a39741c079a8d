"""Output folders: the one rule for writing into a folder that already holds something."""

from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

from carbrand_search.core.errors import UserError


def refuse_non_empty(
    folder: Path, what: str, force: bool | None = None, writes: Sequence[str] = ()
) -> None:
    """Refuse to write into a non-empty `folder` (called `what` in the message), so nothing
    stored there is lost. `force` is the command's --force (None: the command has none): it
    replaces only an earlier output of the command, a folder holding nothing but entries named
    like `writes` (patterns of what the command puts at the top), and never the current folder
    or one above it."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file; choose a folder")
    if not (folder.exists() and any(folder.iterdir())):
        return
    if not force:
        remedy = "choose a new or empty folder" if force is None else "pass --force to replace it"
        raise UserError(f"{what} {folder} is not empty; {remedy}")
    here, target = Path.cwd().resolve(), folder.resolve()
    if target == here or target in here.parents:
        raise UserError(
            f"{what} {folder} holds the current folder: --force would delete it with "
            "everything in it; choose a separate folder"
        )
    foreign = sorted(
        p.name for p in folder.iterdir() if not any(fnmatch(p.name, w) for w in writes)
    )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UserError(
            f"{what} {folder} holds what this command did not write ({', '.join(foreign[:3])}"
            f"{more}), which --force would delete; move it or choose another folder"
        )
