"""Shared plumbing of the trace readers: where the traces live, strict CSV rows that know
their file and line, and the one error every reader raises."""

from __future__ import annotations

import csv
import gzip
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

PathLike = str | os.PathLike[str]

ENV_TRACES_DIR = "QORCH_TRACES_DIR"


class TraceError(ValueError):
    """A trace file is missing, truncated or malformed. The message starts with
    ``FILE:LINE:`` (``FILE:LINE:COLUMN:`` for JSON) so a person can open the spot."""

    def __init__(self, path: PathLike, line: int | None, message: str, column: int | None = None):
        self.path = Path(path)
        self.line = line
        self.column = column
        where = str(self.path)
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


def default_traces_dir() -> Path:
    """``$QORCH_TRACES_DIR``, else ``../shared/data`` beside the repository. Training, tests
    and benchmarks use it; the operator never needs it at run time."""
    env = os.environ.get(ENV_TRACES_DIR)
    if env:
        return Path(env)
    # operator/qorch/traces/_io.py -> parents[3] is the repository root.
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def resolve(path: PathLike | None, relative: str) -> Path:
    """``path`` itself, or ``relative`` under the default traces directory."""
    return Path(path) if path is not None else default_traces_dir() / relative


class Record:
    """One data line of a CSV trace: fields by column name, parsed strictly."""

    __slots__ = ("_fields", "line", "path")

    def __init__(self, path: Path, line: int, fields: dict[str, str]):
        self.path = path
        self.line = line
        self._fields = fields

    def error(self, column: str, message: str) -> TraceError:
        return TraceError(self.path, self.line, f"column {column!r}: {message}")

    def text(self, column: str, *, allow_empty: bool = False) -> str:
        value = self._fields[column]
        if not value and not allow_empty:
            raise self.error(column, "empty value")
        return value

    def number(self, column: str, *, minimum: float | None = None) -> float:
        raw = self._fields[column]
        try:
            value = float(raw)
        except ValueError:
            raise self.error(column, f"{raw!r} is not a number") from None
        if not math.isfinite(value):
            raise self.error(column, f"{raw!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise self.error(column, f"{raw!r} is below {minimum:g}")
        return value

    def integer(self, column: str, *, minimum: int | None = None) -> int:
        raw = self._fields[column]
        try:
            value = int(raw)
        except ValueError:
            try:
                as_float = float(raw)
            except ValueError:
                raise self.error(column, f"{raw!r} is not an integer") from None
            if not as_float.is_integer():
                raise self.error(column, f"{raw!r} is not an integer") from None
            value = int(as_float)
        if minimum is not None and value < minimum:
            raise self.error(column, f"{raw!r} is below {minimum}")
        return value

    def optional_integer(self, column: str, *, minimum: int | None = None) -> int | None:
        return None if self._fields[column] == "" else self.integer(column, minimum=minimum)

    def flag(self, column: str) -> bool:
        raw = self._fields[column]
        if raw not in ("0", "1"):
            raise self.error(column, f"{raw!r} is not 0 or 1")
        return raw == "1"

    def choice(self, column: str, allowed: Sequence[str]) -> str:
        raw = self._fields[column]
        if raw not in allowed:
            raise self.error(column, f"{raw!r} is not one of {', '.join(allowed)}")
        return raw

    def time(self, column: str) -> datetime:
        """An ISO 8601 timestamp with a zone (``Z`` or an offset), returned in UTC."""
        raw = self._fields[column]
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise self.error(column, f"{raw!r} is not an ISO 8601 timestamp") from None
        if value.tzinfo is None:
            raise self.error(column, f"{raw!r} has no time zone")
        return value.astimezone(UTC)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_csv(path: Path, columns: Sequence[str]) -> Iterator[Record]:
    """Yield every data line of ``path`` (plain or gzip CSV) as a ``Record``. The header must
    hold every name in ``columns`` (others are ignored); every line must have as many fields
    as the header. Anything else, and a truncated or corrupt file, raises ``TraceError``."""
    try:
        handle = _open_text(path)
    except OSError as exc:
        raise TraceError(path, None, f"cannot open: {exc.strerror or exc}") from exc
    line = 0
    with handle:
        reader = csv.reader(handle, strict=True)
        try:
            header: list[str] | None = None
            for fields in reader:
                line = reader.line_num
                if header is None:
                    header = fields
                    missing = [c for c in columns if c not in header]
                    if missing:
                        raise TraceError(path, line, f"header lacks column(s) {', '.join(missing)}")
                    continue
                if len(fields) != len(header):
                    raise TraceError(
                        path, line, f"expected {len(header)} fields, got {len(fields)}"
                    )
                yield Record(path, line, dict(zip(header, fields, strict=True)))
        except csv.Error as exc:
            raise TraceError(path, reader.line_num or line + 1, f"bad CSV: {exc}") from exc
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise TraceError(path, line + 1, f"truncated or corrupt gzip: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TraceError(path, line + 1, f"not UTF-8 text: {exc.reason}") from exc
        except OSError as exc:
            raise TraceError(path, line + 1, f"read failed: {exc}") from exc
        if header is None:
            raise TraceError(path, 1, "empty file: expected a header line")
