"""The one exception type that reaches the user as a one-line message, and how any error
becomes one line."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits non-zero."""

    def __init__(self, message: str):
        # Messages quote user input (keys, file names), which may itself hold line breaks.
        super().__init__(" ".join(str(message).split("\n")).replace("\r", " "))


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message, at most `limit` characters; its type's name when
    the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
