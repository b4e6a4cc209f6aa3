"""What the caller passes, checked: the numeric options, and what it names (directories, globs, list files,
paths) expanded into image paths in a stable order."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from client.images import IMAGE_SUFFIXES

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
Inputs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def check_options(top_k: int, concurrency: int = 1) -> None:
    """Refuse, before any request, what the server would refuse for every image (or what would hang a job)."""
    for name, value in (("top_k", top_k), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def check_timeout(timeout: float) -> float:
    if not timeout > 0:  # also NaN
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def iter_paths(inputs: Inputs) -> Iterator[str]:
    """Each image path once: directories recursively (image suffixes only, sorted), globs, list files, paths.

    A list file is a .txt/.lst/.list file of one path per line (blank lines and # comments ignored). A path that
    doesn't exist is still yielded, so the job records it as an error row instead of silently skipping it.
    """
    if isinstance(inputs, bytes | bytearray):
        raise TypeError("score() takes paths, directories, globs or list files, not image bytes (use classify)")
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
