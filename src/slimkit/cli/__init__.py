"""The ``slimkit`` command: a thin typer app over the public API.

Exit codes: 0 success, 1 a result missed its gate (e.g. max_accuracy_drop), 2 bad input
(any SlimkitError: the message is printed as one paragraph, no traceback).

Each command family lives in its own module with a ``register(app)`` function, listed in
``COMMAND_MODULES`` (explicit, no discovery).
"""

from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning slimkit's own errors into exit code 2."""
    from slimkit.errors import AccuracyGateError, SlimkitError

    try:
        app(args=argv, standalone_mode=False)
    except AccuracyGateError as exc:
        typer.echo(f"slimkit: {exc}", err=True)
        return 1
    except SlimkitError as exc:
        typer.echo(f"slimkit: error: {exc}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return 2
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
