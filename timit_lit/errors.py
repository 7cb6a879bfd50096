"""The errors timit_lit reports in one line (the CLI prints them, no traceback)."""


class InputError(ValueError):
    """Bad input: the message names the file and the problem; the CLI prints it on one line."""


class OutputError(InputError):
    """A file could not be written (disk full, ...): one line, as bad input, but exit status 1."""

    exit_code = 1
