"""JSON Lines and result files: precise errors on read, all-or-nothing on write.

Every reader error names ``file:line: field: problem``; every writer writes to a
temporary name in the destination folder and renames it into place, so a crash never
leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


class DataError(ValueError):
    """Bad input, located: file, line (1-based, 0 when not about one line) and field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


def read_jsonl(
    path: str | os.PathLike, on_error: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line.

    Args:
        path: the file.
        on_error: called with each undecodable line's error, which is then skipped;
            without it the error is raised.

    Raises:
        DataError: on a missing file, bytes that are not UTF-8, or a line that is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "", "file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                value = json.loads(text)
            except UnicodeDecodeError as error:
                problem = DataError(path, number, "", f"invalid UTF-8 at byte {error.start}")
            except json.JSONDecodeError as error:
                problem = DataError(path, number, "", f"malformed JSON: {error.msg} at column {error.colno}")
            else:
                yield number, value
                continue
            if on_error is None:
                raise problem
            on_error(problem)


def read_jsonl_objects(path: str | os.PathLike) -> list[dict]:
    """All lines of a file whose every line must be a JSON object."""
    rows = []
    for number, value in read_jsonl(path):
        if not isinstance(value, dict):
            raise DataError(path, number, "", f"expected a JSON object, got {type(value).__name__}")
        rows.append(value)
    return rows


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place.

    Works for files and folders. On an exception the temporary is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    target = temporary / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as UTF-8 JSON Lines atomically; returns the number written."""
    count = 0
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write pretty JSON atomically."""
    write_text(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")
