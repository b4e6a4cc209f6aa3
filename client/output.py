"""Result files for batch scoring (CSV or JSON Lines) that make a job resumable.

Each result is appended and flushed as soon as it arrives, so an interrupted job keeps everything it finished. On
the next run the file is read back: a torn last line (the process died mid-write) is cut off, rows for transient
failures (service busy or unreachable) are dropped so those files are tried again, and every other path is
skipped. When a job completes, the rows are rewritten sorted by path, so an interrupted-and-resumed job ends with
the same file as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from client.errors import ClientError
from client.results import ScoreResult

CSV_FIELDS = ("path", "status", "pipeline", "label", "index", "score", "predictions", "models",
              "error_status", "error_code", "error_message", "request_id")


def result_row(result: ScoreResult) -> dict[str, Any]:
    """The record written for one file (no timings: the file describes the images, not the run)."""
    row: dict[str, Any] = {"path": result.source}
    if result.classification is not None:
        c = result.classification
        row.update(status="ok", pipeline=c.pipeline, label=c.top.label, index=c.top.index, score=c.top.score,
                   predictions=[{"label": p.label, "index": p.index, "score": p.score} for p in c.predictions],
                   models=dict(c.models))
        request_id = c.request_id
    else:
        error: ClientError = result.error
        row.update(status="error", error_status=error.status, error_code=error.code, error_message=error.message)
        request_id = error.request_id
    if request_id:  # the gateway's ID: the row's way into its access log (none in direct mode)
        row["request_id"] = request_id
    return row


def is_final(row: dict[str, Any]) -> bool:
    """Rows that a re-run must not redo: successes and refusals of the input itself (4xx other than 429)."""
    if row.get("status") == "ok":
        return True
    try:
        status = int(row.get("error_status") or 0)
    except ValueError:
        return False
    return (400 <= status < 500 and status != 429) or row.get("error_code") == "read_error"


class ResultFile:
    """An append-only CSV or JSONL result file with resume support."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise ValueError(f"output must end in .csv, .jsonl or .parquet, got {self.path.name!r}")
        self.format = suffix[1:]
        self._handle: io.TextIOWrapper | None = None

    def resume(self) -> set[str]:
        """Prepare the file for appending; the set of paths already done (to skip)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_all([])
            return set()
        self._cut_torn_tail()
        rows = self.read_rows()
        kept = [row for row in rows if is_final(row)]
        if len(kept) != len(rows) or not self._header_is_current():
            self._write_all(kept)
        return {row["path"] for row in kept}

    def discard(self) -> None:
        """Start over (``--overwrite``)."""
        self.path.unlink(missing_ok=True)

    def read_rows(self) -> list[dict[str, Any]]:
        text = self.path.read_text(encoding="utf-8")
        if self.format == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            for key in ("predictions", "models"):
                row[key] = json.loads(row[key]) if row.get(key) else None
            rows.append(row)
        return rows

    def append(self, result: ScoreResult) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept for the job
        self._handle.write(self._encode(result_row(result)))
        self._handle.flush()

    def finalize(self) -> None:
        """Rewrite sorted by path (atomically): identical output whether or not the job was interrupted."""
        self.close()
        self._write_all(sorted(self.read_rows(), key=lambda row: row["path"]))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def _encode(self, row: dict[str, Any]) -> str:
        if self.format == "jsonl":
            return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
        flat = {key: row.get(key, "") for key in CSV_FIELDS}
        for key in ("predictions", "models"):
            flat[key] = json.dumps(row[key], sort_keys=True) if row.get(key) is not None else ""
        buffer = io.StringIO()
        csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n").writerow(flat)
        return buffer.getvalue()

    def _header_is_current(self) -> bool:
        """A CSV written by an older client (other columns) is rewritten before rows are appended to it."""
        if self.format != "csv":
            return True
        with open(self.path, encoding="utf-8") as handle:
            return handle.readline() == self._header()

    def _header(self) -> str:
        return ",".join(CSV_FIELDS) + "\n" if self.format == "csv" else ""

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                handle.write(self._header())
                for row in rows:
                    handle.write(self._encode(row))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:  # name the file the user asked for, not the temporary beside it
            raise OSError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _cut_torn_tail(self) -> None:
        with open(self.path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                handle.truncate(end)
