"""The results table: one CSV row per (image, method, setting, seed), written safely.

Every process appends to its own shard ``shards/rows-p<k>.csv``, flushing and fsync-ing each row,
so an interrupted run keeps every finished row. :func:`merge` folds ``results.csv`` and all shards
into a new ``results.csv`` (write-temp-then-rename), one row per id; it is idempotent and runs at
the end of ``lab run`` and again in ``lab report``. A row half-written when the process died has
no valid ``status`` (the last column) and is ignored.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Self

from ..conditioning import MODALITIES
from ..files import temp_beside
from ..metrics import METRICS

# lab method names before text-only MMSR used its registered name; rows and row ids still read them
LEGACY_METHODS = {"text-only": "text-only-mmsr"}
RESULTS = "results.csv"
RUN_FILE = "run.json"  # the sweep and its invariants, written by `lab run`
SHARDS = "shards"
STATUSES = ("ok", "error")
HEAD = [
    "id", "image", "method", "cfg_mode", "guidance", "subset", *[f"tau_{m}" for m in MODALITIES],
    "caption_kind", "caption", "seed", "output", "lr_path", "hr_path",
]  # fmt: skip
TAIL = [
    "seconds_method", "seconds_metrics", "timings", "warnings", "unavailable", "process", "finished",
    "error", "status",
]  # fmt: skip
COLUMNS = [*HEAD, *METRICS, *TAIL]


def shard_path(out_dir: str | Path, process_index: int) -> Path:
    return Path(out_dir) / SHARDS / f"rows-p{process_index}.csv"


class ShardWriter:
    """Appends rows to one CSV, one flushed and fsync-ed line at a time."""

    def __init__(self, path: str | Path, columns: list[str] = COLUMNS):
        self.columns = columns
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size and _header(path) != columns:
            path = _unused(path)  # written by another version of the lab: keep it, start a new shard
        self.path = path
        self._file = open(path, "a+", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() == 0:
            self._write(columns)
        elif not _ends_with_newline(path):  # the last row was cut off: start on a fresh line
            self._file.write("\n")

    def write(self, row: dict) -> None:
        self._write([_cell(row.get(c)) for c in self.columns])

    def _write(self, values: list[str]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        self._file.write(buffer.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), [])


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _unused(path: Path) -> Path:
    k = 1
    while (candidate := path.with_name(f"{path.stem}.{k}{path.suffix}")).exists():
        k += 1
    return candidate


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of one CSV (a row cut off mid-write is dropped); old method names read as today's."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("status") in STATUSES and row.get("id")]
    for row in rows:
        row["method"] = LEGACY_METHODS.get(row.get("method"), row.get("method"))
    return rows


def collect(out_dir: str | Path) -> list[dict]:
    """All rows of ``results.csv`` and every shard, one per id: an ``ok`` row beats an ``error``
    one, a later row beats an earlier one; in first-seen order."""
    out_dir = Path(out_dir)
    paths = [out_dir / RESULTS, *sorted((out_dir / SHARDS).glob("*.csv"))]
    best: dict[str, dict] = {}
    for path in paths:
        for row in read_rows(path):
            old = best.get(row["id"])
            if old is None or row["status"] == "ok" or old["status"] != "ok":
                best[row["id"]] = row
    return list(best.values())


def merge(out_dir: str | Path, *, remove_shards: bool = False) -> list[dict]:
    """Fold the shards into ``results.csv`` (atomically) and return its rows.

    ``remove_shards`` deletes the shards afterwards; only the end of a run does that, once every
    process has finished writing.
    """
    out_dir = Path(out_dir)
    rows = collect(out_dir)
    shards = list((out_dir / SHARDS).glob("*.csv"))
    if shards or (rows and not (out_dir / RESULTS).is_file()):
        extra = sorted({k for r in rows for k in r} - set(COLUMNS))
        write_csv(out_dir / RESULTS, rows, [*COLUMNS[:-1], *extra, COLUMNS[-1]])
    if remove_shards:
        for path in shards:
            path.unlink()
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def done_ids(out_dir: str | Path) -> set[str]:
    """Ids of the rows that finished (errors are retried)."""
    return {r["id"] for r in collect(out_dir) if r["status"] == "ok"}


def row_file(root: str | Path, rel: str | None) -> Path | None:
    """The file a row names (``output``, ``lr_path`` ...) when it exists inside ``root``, else ``None``:
    a missing file, or one reached through ``..``, an absolute path or a symlink out of the folder."""
    if not rel:
        return None
    root = Path(root).resolve()
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def number(row: dict, column: str) -> float | None:
    """A numeric cell as float, ``None`` when blank or not a number."""
    try:
        value = float(row.get(column) or "nan")
    except ValueError:
        return None
    return None if math.isnan(value) else value
