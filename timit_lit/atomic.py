"""Files written whole or not at all: written under a temporary name beside their target,
then renamed over it (a rename within one folder is atomic), so an interrupted write never
leaves a truncated file and never destroys the previous one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed to ``path`` when the
    block ends without an error, removed in any case. Named per process: DDP ranks, or
    nodes sharing a folder, may write the same target at once."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path, mode: str = "wb", sync: bool = False, **open_options) -> Iterator[IO]:
    """:func:`atomic_path`, opened as a file (``open(tmp, mode, **open_options)``); with ``sync``,
    its contents reach the disk before the rename, so a crash of the machine keeps them too."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_options) as f:
        yield f
        if sync:
            f.flush()
            os.fsync(f.fileno())
