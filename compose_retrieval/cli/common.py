"""The Typer app, its command groups, and what every command shares: the console, one-line errors, KEY=VALUE options.

Plugins add commands through ``register_commands(app, data, zoo)`` and use
``errors_as_exit``, ``console``, ``print_error`` and ``parse_options`` from
``compose_retrieval.cli``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ComposeRetrievalError

__all__ = [
    "app", "data_app", "zoo_app", "console", "err_console", "print_error", "errors_as_exit", "parse_options",
    "print_metrics", "debugging", "DEBUG_ENV",
]

app = typer.Typer(
    help="Composed image retrieval: train, evaluate and list TIRG and its baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make and inspect datasets (commands added by dataset plugins).", no_args_is_help=True)
app.add_typer(data_app, name="data")
zoo_app = typer.Typer(help="Named checkpoints: list them, see one, export or import one.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console()
err_console = Console(stderr=True)

DEBUG_ENV = "COMPOSE_RETRIEVAL_DEBUG"
_debug = False


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1)."),
) -> None:
    """Composed image retrieval: train, evaluate and list TIRG and its baselines."""
    global _debug
    _debug = debug


def debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def errors_as_exit() -> Iterator[None]:
    """Errors become one red line on stderr and exit code 1, never a traceback (unless --debug).

    A library error says what was wrong and what to do; anything else is a bug of ours or
    of a plugin, printed as one line with its type and the way to see the traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Exit):
        raise
    except Exception as exc:
        if debugging():
            raise
        if isinstance(exc, ComposeRetrievalError):
            print_error(str(exc))
        elif isinstance(exc, FileNotFoundError):
            print_error(f"file not found: {exc.filename or exc}")
        else:
            text = " ".join(str(exc).split())[:300]
            print_error(f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)")
        raise typer.Exit(1) from None


def parse_options(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE pairs -> dict; values are read as JSON when they parse ("64", "true", "[1,2]"), else as strings."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ComposeRetrievalError(f"{what} option {pair!r} is not KEY=VALUE (for example name=value)")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    keys = [k for k in metrics if "recall@" in k]
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row(*(f"{metrics[k]:.4f}" for k in keys))
    console.print(table)
    console.print(f"protocol: {metrics.get('protocol')}  queries: {metrics.get('queries')}  gallery: {metrics.get('gallery')}")
