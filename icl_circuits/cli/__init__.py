"""The ``icl-circuits`` command line.

Every error caused by the user (config, arguments, files) prints one line and exits 2.
"""

from __future__ import annotations

import os
import sys

from icl_circuits.cli.commands import DEFAULT_ROOT, check_writable
from icl_circuits.cli.parser import build_parser
from icl_circuits.errors import ICLError
from icl_circuits.limits import check_flags

__all__ = ["DEFAULT_ROOT", "build_parser", "check_writable", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any error the user caused)."""
    try:
        args = build_parser().parse_args(argv)
        check_flags(vars(args))
        args.func(args)
    except ICLError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`icl-circuits show RUN | head`): stop quietly, as cat does.
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except RecursionError:  # a structure nested past Python's recursion limit, wherever it was read
        print("error: input nested too deeply to parse (past Python's recursion limit)", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; lower the sizes in the config (data, model, train.batch_size)", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the user named that cannot be used
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    return 0


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
