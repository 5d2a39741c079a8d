"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits non-zero."""

    def __init__(self, message: str):
        # Messages quote user input (keys, file names), which may itself hold line breaks.
        super().__init__(" ".join(str(message).split("\n")).replace("\r", " "))
