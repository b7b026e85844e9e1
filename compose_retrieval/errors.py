"""The library's error types. The CLI prints any of them as one line and exits non-zero."""

from __future__ import annotations


__all__ = [
    "ComposeRetrievalError", "UnknownNameError", "OptionError", "DuplicateNameError", "CheckpointError", "DatasetError", "UnreadableImage", "RunInterrupted", "plural",
]


def plural(noun: str) -> str:
    """"loss" -> "losses", "combiner" -> "combiners"."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


class ComposeRetrievalError(Exception):
    """Base of every error the library raises on purpose (bad input, missing files)."""


class UnknownNameError(ComposeRetrievalError, KeyError):
    """A name that no registered component has."""

    def __init__(self, kind: str, name: str, suggestions: list[str], available: list[str]):
        self.kind, self.name, self.suggestions, self.available = kind, name, suggestions, available
        hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        listing = ", ".join(available) if available else "none installed"
        super().__init__(f"unknown {kind} {name!r}.{hint} Available {plural(kind)}: {listing}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class OptionError(ComposeRetrievalError, ValueError):
    """An option with a value that the component does not accept."""


class DuplicateNameError(ComposeRetrievalError):
    """A name that two plugins register: ambiguous until one is chosen as PLUGIN:NAME."""


class RunInterrupted(ComposeRetrievalError):
    """A run stopped by Ctrl-C after saving its state; the message gives the command that continues it."""


class CheckpointError(ComposeRetrievalError):
    """A checkpoint that cannot be read, or does not match the model it describes."""


class DatasetError(ComposeRetrievalError):
    """A dataset that cannot be read or used."""


class UnreadableImage(DatasetError):
    """An image file that is missing (``missing``) or cannot be decoded; ``path`` and Pillow's ``reason`` are kept
    apart from the message, for callers that word it their own way (an index lists the reason, a server hides paths)."""

    # defaults: a DataLoader worker's error is raised again in the main process as ``type(exc)(message)``
    def __init__(self, message: str, path: str = "", reason: str = "", missing: bool = False):
        super().__init__(message)
        self.path, self.reason, self.missing = path, reason, missing
