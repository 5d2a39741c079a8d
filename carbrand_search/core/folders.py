"""Output folders: the one rule for writing into a folder that already holds something."""

from pathlib import Path

from carbrand_search.core.errors import UserError


def refuse_non_empty(folder: Path, what: str, force: bool | None = None) -> None:
    """Refuse to write into a non-empty `folder` (called `what` in the message), so nothing
    stored there is lost. `force` is the command's --force (None: the command has none)."""
    if force or not (folder.exists() and any(folder.iterdir())):
        return
    remedy = "choose a new or empty folder" if force is None else "pass --force to replace it"
    raise UserError(f"{what} {folder} is not empty; {remedy}")
