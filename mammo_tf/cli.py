"""One exit-code policy for every entry point (`data_prep/`, `train/`, `eval/`).

==== ==================================================================================
code meaning
==== ==================================================================================
0    done
1    done, but some inputs were rejected (only `data_prep.convert`: listed in errors.csv)
2    user error: bad flag or override, missing or unusable input, unreadable model or data,
     disk full; one line on stderr naming the problem, no traceback
3    unexpected failure (a bug): the traceback is printed
==== ==================================================================================

Usage in an entry point::

  from mammo_tf import cli
  if __name__ == "__main__":
    cli.run(main)

`main(argv)` may return 0/1/2. Exceptions are mapped by `exit_code`: `UserError`, `ValueError`
(bad values: config validation, `DicomError`, manifest errors), `OSError` (missing files,
permissions, disk full), absl's `UsageError` and flag errors exit 2 with one line; anything else
exits 3 with its traceback. ``--help`` (and ``--helpfull``, ``-h``) print the flags and exit 0.
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable, Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_USER, EXIT_CRASH = 0, 1, 2, 3


class UserError(Exception):
  """A problem the user can fix (bad input, bad setting, damaged file); one line, exit 2."""


def _user_error_types() -> tuple[type, ...]:
  types: list[type] = [UserError, ValueError, OSError]
  try:
    from absl import app
    from absl import flags
    types += [app.UsageError, flags.Error]
  except ImportError:  # pragma: no cover
    pass
  return tuple(types)


def exit_code(e: BaseException) -> int:
  """2 for user errors (see the module docstring), 3 for anything else."""
  if isinstance(e, _user_error_types()) and not isinstance(e, (MemoryError, NotImplementedError)):
    return EXIT_USER
  return EXIT_CRASH


def one_line(e: BaseException) -> str:
  """``"error: <message>"`` on one line (an OSError as "<strerror>: <file>")."""
  if isinstance(e, OSError) and e.strerror and not e.args[1:2] == (str(e),):
    text = f"{e.strerror}: {e.filename}" if e.filename else str(e)
  elif isinstance(e, KeyError) and e.args:
    text = str(e.args[0])
  else:
    text = str(e) or type(e).__name__
  return "error: " + " ".join(text.split())


def report(e: BaseException) -> int:
  """Prints one line (user error) or the traceback (crash) on stderr; returns the exit code."""
  code = exit_code(e)
  if code == EXIT_USER:
    print(one_line(e), file=sys.stderr)
  else:
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    print(f"unexpected failure (exit {code}): {type(e).__name__}", file=sys.stderr)
  sys.stderr.flush()
  return code


def _data_dirs(data_flags: Sequence[str]) -> list[str]:
  from absl import flags
  out = []
  for name in data_flags:
    value = flags.FLAGS[name].value if name in flags.FLAGS else None
    out += list(value) if isinstance(value, (list, tuple)) else [value]
  return [v for v in out if v]


def wrap(main: Callable[[Sequence[str]], int | None],
         data_flags: Sequence[str] = ()) -> Callable[[Sequence[str]], int]:
  """`main` with exceptions mapped to exit codes (for `absl.app.run`).

  A TensorFlow ``DataLossError`` (a damaged TFRecord) becomes a user error naming the damaged
  shard(s) of the converter output folders given by the flags `data_flags`.
  """

  def wrapped(argv: Sequence[str]) -> int:
    try:
      code = main(argv)
    except SystemExit:
      raise
    except KeyboardInterrupt:
      raise
    except BaseException as e:
      if type(e).__name__ == "DataLossError":
        from mammo_tf.training import artifacts
        e = artifacts.data_loss_error(e, _data_dirs(data_flags))
      return report(e)
    return int(code or 0)

  return wrapped


# absl prints the help for these and then exits 1; asking for help is not a failure.
_HELP_FLAGS = frozenset(f"{dash}{name}" for dash in ("-", "--")
                        for name in ("help", "h", "?", "helpshort", "helpfull", "helpxml"))


def _parse_flags(argv: Sequence[str]):
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())} (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_USER)
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
      sys.exit(EXIT_OK)
    raise


def run(main: Callable[[Sequence[str]], int | None], data_flags: Sequence[str] = ()) -> None:
  """`absl.app.run(main)` with this module's exit codes (flag errors exit 2 too); `data_flags`
  name the flags holding converter output folders (see `wrap`)."""
  from absl import app
  app.run(wrap(main, data_flags), flags_parser=_parse_flags)
