"""The errors timit_lit reports in one line (the CLI prints them, no traceback)."""

from __future__ import annotations

import re
from argparse import ArgumentError


class InputError(ValueError):
    """Bad input: the message names the file and the problem; the CLI prints it on one line."""


class OutputError(InputError):
    """A file could not be written (disk full, ...): one line, as bad input, but exit status 1."""

    exit_code = 1


# jsonargparse's report of a value outside an option's choices (a Literal type).
CHOICE = re.compile(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)")


def option_error_line(error: ArgumentError) -> str:
    """jsonargparse's multi-line report of a command line or config it rejects, in one line:
    an option the chosen network does not take names the option and the network; any other
    error its key, what was expected and what was given; a value outside an option's choices
    names the option and its choices; a missing config file is named."""
    text = str(error)
    missing_config = re.match(r'Parser key "config": File does not exist: \'(.*)\'', text)
    if missing_config:
        return f"{missing_config.group(1)}: config file not found (--config)"
    choice = CHOICE.search(text)
    if choice:
        # Nested keys (a network's own options sit under "model") joined into the option's name.
        keys = re.findall(r'Parser key "([^"]+)"', text[: choice.start()])
        choices = ", ".join(value.strip() for value in choice.group(1).split(","))
        return f"{'.'.join(keys) or 'option'}: {choice.group(2).strip()} is not one of {choices}"
    unknown = re.search(r"Problem with given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", text)
    if unknown:
        class_path, option = unknown.groups()
        return (f"model.{option}: the network {class_path.rsplit('.', 1)[-1]} takes no such option "
                f"(model.class_path {class_path})")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = next((line for line in lines if line.startswith("Parser key")), None)
    if key is None:
        return lines[0] if lines else "rejected"
    reasons = [line.removeprefix("- ") for line in lines
               if line.startswith("- ") and "NoneType" not in line] or lines[lines.index(key) + 1 : lines.index(key) + 2]
    given = next((line for line in lines if line.startswith("Given value:")), "")
    name = key[len("Parser key"):].strip().strip(':"')
    return f"{name}: {'; '.join(reasons)}" + (f" ({given[0].lower()}{given[1:]})" if given else "")
