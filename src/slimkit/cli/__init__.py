"""The ``slimkit`` command: a thin typer app over the public API.

Exit codes: 0 success, 1 a result missed its gate (e.g. max_accuracy_drop), 2 bad input
(any SlimkitError: the message is printed as one paragraph, no traceback), 3 an unexpected
error inside slimkit or a library it calls (a bug: the traceback is printed to report it),
130 aborted.

Each command family lives in its own module with a ``register(app)`` function, listed in
``COMMAND_MODULES`` (explicit, no discovery).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from typing import Any

import typer

COMMAND_MODULES = [
    "slimkit.cli.core",
    "slimkit.cli.quantize",
    "slimkit.cli.prune",
    "slimkit.cli.compress",
    "slimkit.cli.distill",
    "slimkit.cli.decompose",
    "slimkit.cli.search",
    "slimkit.cli.hf",
]

app = typer.Typer(
    name="slimkit",
    help="Make PyTorch models really smaller and faster for CPU/edge, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _is_click_error(exc: BaseException) -> bool:
    """A click usage error (unknown option, missing argument, no command): click's own, or the
    copy typer >= 0.2x vendors as ``typer._click``, whose classes are not click's."""
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "show")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning slimkit's own errors into exit code 2 and its own
    warnings (e.g. TruncationWarning) into one line each; other warnings show as usual."""
    with warnings.catch_warnings():  # restores showwarning on the way out
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if category.__module__.startswith("slimkit."):  # its source line is torch's wrapper
                typer.echo(f"slimkit: warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        return _main(argv)


def run() -> None:
    """The ``slimkit`` console script: ``main()``, then exit with its code."""
    code = main()
    _leave_torchrun_worker(code)
    sys.exit(code)


def _leave_torchrun_worker(code: int) -> None:
    """A torchrun worker whose pipeline has joined and left its process group exits here, with
    ``os._exit`` after flushing, instead of through interpreter teardown. Only the console
    script does this (``run``), never ``main()``, so Python callers get control back.

    Gloo's C++ threads can still be unwinding when Python finalizes, and then the process dies
    with SIGABRT ('terminate called without an active exception'; pytorch#179291 is open), so
    torchrun reports a finished job as failed. The pipeline leaves the group together
    (runner._process_group), which made this rare, not impossible: 1 abort in 3 parallel test
    suites. Every artifact is written and closed by now; only teardown is skipped.
    """
    runner = sys.modules.get("slimkit.pipeline.runner")
    if runner is None or not getattr(runner, "LEFT_PROCESS_GROUP", False):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    from slimkit.errors import AccuracyGateError, SlimkitError

    try:
        # Not standalone, so errors reach the handlers below; a command's ``typer.Exit(code)``
        # comes back as the return value.
        rv = app(args=argv, standalone_mode=False)
    except AccuracyGateError as exc:
        typer.echo(f"slimkit: {exc}", err=True)
        return 1
    except SlimkitError as exc:
        typer.echo(f"slimkit: error: {exc}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:
        if not _is_click_error(exc):
            # Not bad input: a bug. Its own code, so a script can tell it from a missed gate
            # (1), which it used to share as Python's uncaught-exception exit.
            traceback.print_exc()
            typer.echo(
                f"slimkit: internal error: {type(exc).__name__}: {exc}; this is a bug in "
                "slimkit (or a library it calls), not in your input: please report it with the "
                "traceback above",
                err=True,
            )
            return 3
        exc.show()  # type: ignore[attr-defined]  # usage and the message, no traceback
        return int(getattr(exc, "exit_code", 2))
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    run()
