"""The ``permsym`` command line: one thin command per public function, JSON with ``--json``.

Bad input prints one line to stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import sys

from typer.exceptions import Abort, Exit, TyperException

from permsym._errors import PermsymError
from permsym.cli import align as _align  # noqa: F401
from permsym.cli import count as _count  # noqa: F401  (registers commands)
from permsym.cli import curvature as _curvature  # noqa: F401
from permsym.cli import paper as _paper  # noqa: F401
from permsym.cli import sweep as _sweep  # noqa: F401
from permsym.cli import train as _train  # noqa: F401
from permsym.cli.app import app

__all__ = ["app", "entry", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn user errors into one stderr line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    try:
        app(args=args, standalone_mode=False, prog_name="permsym")
    except Exit as exc:
        return int(exc.exit_code or 0)
    except Abort:
        sys.stderr.write("permsym: interrupted.\n")
        return 130
    except TyperException as exc:
        sys.stderr.write(f"permsym {command}: {exc.format_message()}\n".replace("permsym : ", "permsym: "))
        return 2
    except (PermsymError, ValueError, TypeError, OSError) as exc:
        message = " ".join(str(exc).split())
        if command and message.startswith(f"{command}: "):  # the library already named the call
            message = message[len(command) + 2 :]
        sys.stderr.write(f"permsym {command}: {message}\n".replace("permsym : ", "permsym: "))
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
