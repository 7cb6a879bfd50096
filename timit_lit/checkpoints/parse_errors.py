"""A checkpoint's saved values that jsonargparse rejects, said in one line naming the file."""

from __future__ import annotations

from argparse import ArgumentError
from contextlib import contextmanager
from typing import Iterator

from timit_lit.errors import InputError


def parse_error_reason(error: ArgumentError) -> str:
    """jsonargparse's multi-line report cut to its innermost ``key: reason`` (nested unions
    repeat the outer keys)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keys = [i for i, line in enumerate(lines[:-1]) if line.startswith("Parser key")]
    if not keys:
        return lines[0] if lines else "rejected"
    key = lines[keys[-1]][len("Parser key"):].strip().strip(':"').removeprefix("module.")  # load_from_checkpoint's
    return f"{key}: {lines[keys[-1] + 1]}"


@contextmanager
def one_line_parse_errors(parser, path: str) -> Iterator[None]:
    """Values from the checkpoint at ``path`` that ``parser`` rejects give one InputError
    naming the file and the value, rather than jsonargparse's usage and multi-line report."""
    exit_on_error, parser.exit_on_error = parser.exit_on_error, False
    try:
        yield
    except ArgumentError as error:
        raise InputError(f"{path}: a saved hyperparameter does not parse: {parse_error_reason(error)}") from None
    finally:
        parser.exit_on_error = exit_on_error
