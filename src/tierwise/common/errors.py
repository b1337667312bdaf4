"""One exception type for bad user input, so the CLI can show a clean message instead of a traceback."""


class TierwiseError(Exception):
    """A problem with the user's input or environment (bad file, unsupported model, bad flag).

    The message must say what is wrong and, where it helps, where (file, line) and what would be accepted.
    """
