"""Expand what the user names (directories, globs, list files, paths) into image paths, in a stable order."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from client.images import IMAGE_SUFFIXES

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
Inputs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def iter_paths(inputs: Inputs) -> Iterator[str]:
    """Each image path once: directories recursively (image suffixes only, sorted), globs, list files, paths.

    A list file is a .txt/.lst/.list file of one path per line (blank lines and # comments ignored). A path that
    doesn't exist is still yielded, so the job records it as an error row instead of silently skipping it.
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else inputs
    seen: set[str] = set()
    for item in items:
        for path in _expand(str(item)):
            if path not in seen:
                seen.add(path)
                yield path


def _expand(item: str) -> Iterator[str]:
    path = Path(item)
    if path.is_dir():
        found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        yield from sorted(str(p) for p in found)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield line
    elif not path.exists() and glob.has_magic(item):
        yield from sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
    else:
        yield item
