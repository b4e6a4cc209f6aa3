"""Parquet result files, resumable like the CSV and JSONL ones.

A Parquet file cannot be appended to, so a job writes its rows to a JSON Lines journal beside it
(``OUT.parquet.partial.jsonl``, the same ``ResultFile`` as ``-o OUT.jsonl``) and turns the journal into the
Parquet file, sorted by path, only when it completes. Resuming reads the journal, or a finished Parquet file.
The columns are the CSV's, typed: ``predictions`` a list of (label, index, score), ``models`` a map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from client.output import CSV_FIELDS, ResultFile
from client.results import ScoreResult

MISSING_PYARROW = "Parquet output needs pyarrow: pip install './client[ray]'"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(MISSING_PYARROW) from None
    return pyarrow


def schema() -> Any:
    pa = _pyarrow()
    prediction = pa.struct([("label", pa.string()), ("index", pa.int64()), ("score", pa.float64())])
    types = {"index": pa.int64(), "score": pa.float64(), "error_status": pa.int64(),
             "predictions": pa.list_(prediction), "models": pa.map_(pa.string(), pa.string())}
    return pa.schema([(name, types.get(name, pa.string())) for name in CSV_FIELDS])


class ParquetResultFile:
    """Same interface as ResultFile (resume, append, close, finalize, discard) for ``.parquet`` outputs."""

    def __init__(self, path: str | Path) -> None:
        _pyarrow()
        self.path = Path(path)
        self.journal = ResultFile(self.path.with_name(self.path.name + ".partial.jsonl"))

    def resume(self) -> set[str]:
        if not self.journal.path.exists() and self.path.exists():
            self.journal._write_all(self.read_rows())  # a finished file: resume from its rows
        return self.journal.resume()

    def read_rows(self) -> list[dict[str, Any]]:
        """The rows of the finished Parquet file, as the JSONL journal holds them."""
        import pyarrow.parquet as pq

        rows = pq.read_table(self.path).to_pylist()
        for row in rows:
            if row.get("models") is not None:
                row["models"] = dict(row["models"])
            for key in [key for key, value in row.items() if value is None]:
                del row[key]
        return rows

    def append(self, result: ScoreResult) -> None:
        self.journal.append(result)

    def close(self) -> None:
        self.journal.close()

    def finalize(self) -> None:
        """Write the Parquet file (atomically) from the journal, sorted by path, and drop the journal."""
        pa = _pyarrow()
        import pyarrow.parquet as pq

        self.journal.close()
        rows = sorted(self.journal.read_rows(), key=lambda row: row["path"])
        columns = {name: [_cell(row, name) for row in rows] for name in CSV_FIELDS}
        table = pa.Table.from_pydict(columns, schema=schema())
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, self.path)
        except OSError as exc:
            raise OSError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.journal.path.unlink()

    def discard(self) -> None:
        """Start over: remove the Parquet file and any journal."""
        for path in (self.path, self.journal.path):
            path.unlink(missing_ok=True)


def _cell(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if name == "models" and value is not None:
        return list(value.items())
    if name in ("index", "error_status") and value not in (None, ""):
        return int(value)
    return value
