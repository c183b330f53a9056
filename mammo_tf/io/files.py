"""Atomic file writes: a temp file in the target folder, then a rename.

A crash or kill never leaves a half-written file under the final name, and leftovers carry the
`TMP_PREFIX` so that resumable jobs can sweep them.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable

TMP_PREFIX = ".tmp-"


def atomic_write_with(path: str, write: Callable[[IO[bytes]], None], *,
                      fsync: bool = False) -> None:
  """Calls ``write(f)`` on a temp file beside `path`, then renames it to `path`.

  An OSError is re-raised naming `path`; the temp file is removed on any failure.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
  try:
    os.fchmod(fd, _default_mode())  # mkstemp makes 0600; outputs get the usual permissions
    with os.fdopen(fd, "wb") as f:
      write(f)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and not str(e).startswith("cannot write"):
      raise OSError(e.errno, f"cannot write {path} ({e.strerror or e})") from e
    raise


def _default_mode() -> int:
  """0o666 less the process umask (what `open(path, "w")` would give)."""
  umask = os.umask(0o022)
  os.umask(umask)
  return 0o666 & ~umask


def atomic_write(path: str, data: bytes | str) -> None:
  """Writes `data` (str is UTF-8 encoded) to `path` atomically."""
  payload = data.encode("utf-8") if isinstance(data, str) else data
  atomic_write_with(path, lambda f: f.write(payload))


def atomic_write_json(path: str, obj: Any, *, indent: int = 2,
                      default: Callable[[Any], Any] | None = None,
                      allow_nan: bool = True) -> None:
  """Writes `obj` as sorted-key JSON (with a final newline) to `path` atomically."""
  text = json.dumps(obj, indent=indent, sort_keys=True, default=default, allow_nan=allow_nan)
  atomic_write(path, text + "\n")
