"""Crash-safe artifact writing: temporary file, fsync, rename; under torchrun by rank 0 alone, the others wait."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynacnn.distributed import barrier, is_main
from dynacnn.errors import DynacnnError

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents); raise a one-line error if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if is_main():  # under torchrun the only rank that writes there
            probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
            probe.close()
    except OSError as exc:
        raise DynacnnError(
            f"cannot write to output directory {path}: {exc.strerror or exc}; choose another --out"
        ) from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename over `path`.

    If anything fails (disk full, kill), the previous file at `path` is left untouched. Under torchrun every rank
    calls this alike: rank 0 writes once every rank has arrived (so a rank that checked whether the file exists
    before its call cannot have seen this write), and every rank returns once the file is in place
    (`distributed.barrier`), so a read after a write sees the new file on every rank.
    """
    path = Path(path)
    barrier()
    if is_main():
        _write_here(path, write, mode)
    barrier()
    return path


def _write_here(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """`atomic_write`'s work in this process."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DynacnnError(f"cannot write {path}: {exc.strerror or exc}; choose another --out") from exc
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise DynacnnError(
                f"cannot write {path}: {exc.strerror or exc}; free some space or choose another --out"
            ) from exc
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write `data` to `path`."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 `text` to `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (NaN is refused: JSON has no NaN)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DynacnnError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DynacnnError(f"{path} is not valid JSON ({exc}); delete it and re-run") from None
