"""The registry: plugins found through entry points, components looked up by kind and name.

Every plugin, built-in or third-party, is a module named by an entry point of the
group ``compose_retrieval``. Entry points are read once and cached; a plugin that
fails to import is skipped with a warning that names it. Components are collected
by calling each plugin's ``register_*`` hook with a ``register`` callback.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import ComposeRetrievalError, DuplicateNameError, OptionError, UnknownNameError
from .options import annotations_of, check_value

# kind -> hook name. The kind is what errors and `compose-retrieval list` call it.
KINDS: dict[str, str] = {
    "image_encoder": "register_image_encoders",
    "text_encoder": "register_text_encoders",
    "combiner": "register_combiners",
    "loss": "register_losses",
    "dataset": "register_datasets",
    "pretrained": "register_pretrained",
}
ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass
class Registered:
    """One registry entry."""

    name: str
    factory: Any
    plugin: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

_pm: pluggy.PluginManager | None = None
_tables: dict[str, dict[str, Registered]] = {}
_distributions: dict[str, str] = {}  # entry-point plugin name -> the installed package that declares it


def _display(kind: str) -> str:
    return kind.replace("_", " ")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every entry-point plugin loaded once."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                warnings.warn(
                    f"compose_retrieval plugin {ep.name!r} ({ep.value}) failed to import and was skipped: "
                    f"{type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            pm.register(plugin, name=ep.name)
            if getattr(ep, "dist", None) is not None:
                _distributions[ep.name] = ep.dist.name
        _pm = pm
    return _pm


def reload_plugins() -> None:
    """Forget every loaded plugin and read the entry points again (after installing one)."""
    global _pm
    _pm = None
    _tables.clear()
    _distributions.clear()


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object in-process (a notebook, a test); returns its name."""
    pm = get_plugin_manager()
    try:
        registered = pm.register(plugin, name=name)
    except ValueError as exc:  # pluggy: the name or the object is taken
        raise ComposeRetrievalError(f"plugin {name or plugin!r} is already registered: {str(exc).splitlines()[0]}") from None
    _tables.clear()
    if registered is None:
        raise ComposeRetrievalError(f"plugin {name or plugin!r} is blocked")
    return registered


def unregister_plugin(plugin_or_name: Any) -> None:
    """Remove a plugin registered with ``register_plugin`` (or an entry-point plugin)."""
    pm = get_plugin_manager()
    if isinstance(plugin_or_name, str):
        pm.unregister(name=plugin_or_name)
    else:
        pm.unregister(plugin_or_name)
    _tables.clear()


def _table(kind: str) -> dict[str, Registered]:
    if kind not in KINDS:
        raise UnknownNameError("kind", kind, difflib.get_close_matches(kind, KINDS), sorted(KINDS))
    if kind in _tables:
        return _tables[kind]
    pm = get_plugin_manager()
    table: dict[str, Registered] = {}
    hook = getattr(pm.hook, KINDS[kind])
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(name: str, factory: Any, description: str | None = None, _plugin=plugin_name) -> None:
            if name in table:
                raise DuplicateNameError(
                    f"{_display(kind)} {name!r} is registered by two plugins: "
                    f"{table[name].plugin!r} and {_plugin!r}; uninstall or block one of them"
                )
            if description is None:
                description = _first_line(getattr(factory, "description", "") or inspect.getdoc(factory) or "")
            table[name] = Registered(name, factory, _plugin, description)

        try:
            impl.function(register=register)
        except DuplicateNameError:
            raise
        except Exception as exc:
            warnings.warn(
                f"compose_retrieval plugin {plugin_name!r} failed in {KINDS[kind]} and was skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
    _tables[kind] = table
    return table


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Sorted names of the registered components of ``kind`` matching a wildcard pattern."""
    return sorted(n for n in _table(kind) if fnmatch.fnmatchcase(n, pattern))


def get_entry(kind: str, name: str) -> Registered:
    """The registry entry of ``name``; an unknown name raises UnknownNameError with suggestions."""
    table = _table(kind)
    if name not in table:
        names = sorted(table)
        raise UnknownNameError(_display(kind), name, difflib.get_close_matches(name, names, n=3, cutoff=0.6), names)
    return table[name]


def create(kind: str, name: str, *args: Any, **options: Any) -> Any:
    """Build the component ``name`` of ``kind`` with ``options``; it remembers its options."""
    entry = get_entry(kind, name)
    check_options(kind, name, options, engine_arguments=True)
    try:
        obj = entry.factory(*args, **options)
    except (TypeError, ValueError) as exc:
        if not options or isinstance(exc, ComposeRetrievalError):
            raise
        raise OptionError(f"{_display(kind)} {name!r} cannot be built with options {options}: {exc}") from exc
    try:
        obj._options = dict(options)
        obj._registry_name = name
    except AttributeError:  # pragma: no cover - a factory returning an immutable object
        pass
    return obj


# Arguments the engine passes itself; a user never sets them as options.
ENGINE_ARGUMENTS = {"image_dim", "text_dim", "embed_dim", "map_channels", "token_dim", "block_channels", "out_dim", "data_root"}


def accepted_options(kind: str, name: str) -> list[str] | None:
    """The keyword arguments the factory of ``name`` takes, or None when it takes any (``**kwargs``)."""
    try:
        params = inspect.signature(get_entry(kind, name).factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_options(kind: str, name: str, options: dict[str, Any], *, engine_arguments: bool = False) -> None:
    """Unknown option names are a one-line error listing the options that exist.

    A user's options may not name the sizes the engine passes itself (ENGINE_ARGUMENTS);
    ``engine_arguments=True`` allows them, for the engine's own calls.
    """
    entry = get_entry(kind, name)
    accepted = accepted_options(kind, name)
    settable = [n for n in accepted or () if n not in ENGINE_ARGUMENTS]
    for key in options if accepted is not None else ():
        if key in ENGINE_ARGUMENTS and key in accepted and not engine_arguments:
            raise OptionError(
                f"{_display(kind)} {entry.name!r}: {key!r} is set by the engine, not as an option"
                f" (sizes follow --embed-dim and the encoders). Its options: {', '.join(settable) or 'none'}."
            )
        if key not in accepted:
            close = difflib.get_close_matches(key, settable, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(settable) or "none"
            raise OptionError(f"{_display(kind)} {entry.name!r} has no option {key!r}.{hint} Its options: {listing}.")
    hints = annotations_of(entry.factory)
    for key, value in options.items():
        check_value(f"{_display(kind)} {entry.name!r}", key, value, hints.get(key))


def provenance(kind: str, name: str) -> dict[str, str]:
    """Where the component ``name`` of ``kind`` comes from: its plugin and, for an entry point, its package."""
    entry = get_entry(kind, name)
    found = {"plugin": entry.plugin}
    if entry.plugin in _distributions:
        found["package"] = _distributions[entry.plugin]
    return found


def describe(kind: str, pattern: str = "*") -> list[tuple[str, str, str]]:
    """(name, one-line description, plugin) for the components of ``kind`` matching ``pattern``."""
    table = _table(kind)
    return [(n, table[n].description, table[n].plugin) for n in list_components(kind, pattern)]


def _lister(kind: str) -> Callable[[str], list[str]]:
    def lister(pattern: str = "*") -> list[str]:
        return list_components(kind, pattern)

    lister.__name__ = f"list_{kind}s"
    lister.__doc__ = f"Sorted names of the registered {_display(kind)}s matching a wildcard pattern."
    return lister


list_image_encoders = _lister("image_encoder")
list_text_encoders = _lister("text_encoder")
list_combiners = _lister("combiner")
list_losses = _lister("loss")
list_datasets = _lister("dataset")
