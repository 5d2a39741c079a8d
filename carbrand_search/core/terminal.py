"""The terminal: consoles that print names as they are, never as markup or control codes."""

import unicodedata
from typing import Any

from rich.console import Console
from rich.text import Text


def clean(text: str) -> str:
    """`text` without control characters (escape sequences, bells, carriage returns) except
    newlines and tabs: brand and file names come from folders, archives and databases."""
    return "".join(c for c in text if c in "\n\t" or not unicodedata.category(c).startswith("C"))


def one_line(text: str) -> str:
    """`clean(text)` on one line: a newline in a name (a folder may hold one) is shown as \\n,
    so it cannot split a table row or a line of output in two."""
    return clean(text).replace("\r", "").replace("\n", "\\n").replace("\t", " ")


class PlainConsole(Console):
    """A rich Console for text from outside: no markup (`Mini [cooper]` stays as it is, a
    `[link=…]` is no link), no highlighting, no control characters. Colour comes only from
    `Text` objects built in code, such as `tagged`."""

    def __init__(self, **kwargs: Any):
        super().__init__(markup=False, highlight=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(clean(text), **kwargs)


def tagged(tag: str, style: str, message: str) -> Text:
    """`tag` in `style`, then `message` as plain text: `tagged("error:", "red", str(e))`."""
    return Text.assemble((tag, style), " ", clean(message))
