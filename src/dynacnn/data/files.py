"""Finding and reading dataset files with one-line errors."""

from __future__ import annotations

from pathlib import Path

from dynacnn.errors import DataError


def require_dir(path: Path, what: str, fix: str) -> Path:
    """`path` if it is a non-empty directory, else a DataError naming it and `fix`."""
    if not path.is_dir():
        raise DataError(f"{what} directory {path} does not exist; {fix}")
    try:
        empty = not any(path.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {what} directory {path}: {exc.strerror or exc}; check its permissions") from None
    if empty:
        raise DataError(f"{what} directory {path} is empty; {fix}")
    return path


def find_file(directory: Path, names: tuple[str, ...], fix: str) -> Path:
    """The first of `names` that exists in `directory`, else a DataError naming the missing file."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing file {directory / names[0]}; {fix}")


def read_bytes(path: Path) -> bytes:
    """The bytes of `path`, turning an unreadable file into a DataError."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file and its permissions") from None
