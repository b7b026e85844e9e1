"""The ``compose-retrieval`` command line: a thin layer over the public API, one module per command group.

For a plugin's ``register_commands(app, data, zoo)`` hook: ``errors_as_exit`` (errors as
one line and exit 1), ``console``, ``print_error`` and ``parse_options`` (KEY=VALUE pairs).
"""

from __future__ import annotations

from .. import registry
from ..errors import ComposeRetrievalError
from .common import app, console, data_app, errors_as_exit, parse_options, print_error, print_metrics, zoo_app
from . import evaluate, listing, train, zoo  # noqa: F401  (their commands join the app)
from . import classify  # noqa: F401  (compositional classification)
from . import search  # noqa: F401  (index a folder, search it)
from . import serve  # noqa: F401  (the search page; fastapi is imported only when it runs)

__all__ = [
    "app", "data_app", "zoo_app", "console", "errors_as_exit", "parse_options", "print_error", "print_metrics",
    "add_plugin_commands", "main",
]

_plugin_commands_added = False


def add_plugin_commands() -> None:
    """Let plugins add commands through their register_commands hook (once)."""
    global _plugin_commands_added
    if not _plugin_commands_added:
        _plugin_commands_added = True
        registry.get_plugin_manager().hook.register_commands(app=app, data=data_app, zoo=zoo_app)


def main() -> None:
    """Entry point of the ``compose-retrieval`` console script."""
    try:
        add_plugin_commands()
    except ComposeRetrievalError as exc:
        print_error(str(exc))
        raise SystemExit(1) from None
    app()
