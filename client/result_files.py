"""The result file for an output path's suffix: CSV or JSON lines (client/output.py), or Parquet
(client/parquet_output.py, which needs pyarrow)."""

from __future__ import annotations

from pathlib import Path

from client.output import ResultFile
from client.parquet_output import ParquetResultFile


def open_result_file(path: str | Path) -> ResultFile | ParquetResultFile:
    """A ResultFile, or for ``.parquet`` a ParquetResultFile (same methods)."""
    if Path(path).suffix.lower() == ".parquet":
        return ParquetResultFile(path)
    return ResultFile(path)
