"""The registry: plugins found through entry points, components looked up by kind and name.

Every plugin, built-in or third-party, is a module named by an entry point of the
group ``compose_retrieval``. Entry points are read once and cached; a plugin that
fails to import is skipped with a warning that names its package and points at the
plugin's line. Components are collected by calling each plugin's ``register_*`` hook
with a ``register`` callback.

Two plugins may register one name: the conflict is a warning naming both packages, the
bare name is ambiguous until chosen, and every other name keeps working. The qualified
form ``PLUGIN:NAME`` (``combiners:tirg``) always names one plugin's component.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import inspect
import os
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import ComposeRetrievalError, DuplicateNameError, OptionError, UnknownNameError, plural
from .options import annotations_of, check_value

__all__ = [
    "KINDS", "ENTRY_POINT_GROUP", "ENGINE_ARGUMENTS", "Registered", "get_plugin_manager", "reload_plugins",
    "register_plugin", "unregister_plugin", "list_components", "get_entry", "create", "accepted_options",
    "check_options", "provenance", "describe", "plugin_package", "qualify", "QUALIFIER", "list_image_encoders", "list_text_encoders",
    "list_combiners", "list_losses", "list_datasets", "PLUGINS_ENV",
]

# kind -> hook name. The kind is what errors and `compose-retrieval list` call it.
KINDS: dict[str, str] = {
    "image_encoder": "register_image_encoders",
    "text_encoder": "register_text_encoders",
    "combiner": "register_combiners",
    "loss": "register_losses",
    "dataset": "register_datasets",
    "recipe": "register_recipes",
    "pretrained": "register_pretrained",
}
ENTRY_POINT_GROUP = hookspecs.PROJECT
QUALIFIER = ":"


@dataclass
class Registered:
    """One registry entry."""

    name: str
    factory: Any
    plugin: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Table:
    """The components of one kind: by bare name (unique ones), by PLUGIN:NAME (all), and the ambiguous bare names."""

    unique: dict[str, Registered] = field(default_factory=dict)
    qualified: dict[str, Registered] = field(default_factory=dict)
    ambiguous: dict[str, list[Registered]] = field(default_factory=dict)


_pm: pluggy.PluginManager | None = None
_tables: dict[str, _Table] = {}
_distributions: dict[str, str] = {}  # entry-point plugin name -> the installed package that declares it


def _display(kind: str) -> str:
    return kind.replace("_", " ")


def _package_of(ep: importlib.metadata.EntryPoint) -> str | None:
    return ep.dist.name if getattr(ep, "dist", None) is not None else None


def _warn_at_plugin(message: str, exc: BaseException | None, fallback: str) -> None:
    """A warning that points at the plugin's own line (the deepest frame of ``exc`` outside the import
    machinery), not at the engine's: the line a plugin author has to fix."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")] if exc else []
    frames = [f for f in frames if f.filename != __file__] or frames
    filename, lineno = (frames[-1].filename, frames[-1].lineno or 0) if frames else (fallback, 0)
    warnings.warn_explicit(message, RuntimeWarning, filename, lineno, module=fallback)


def _what_to_do(plugin: str) -> str:
    package = _distributions.get(plugin)
    return f"fix or uninstall the package {package!r} (pip uninstall {package})" if package else f"fix or unregister the plugin {plugin!r}"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every entry-point plugin loaded once."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            package = _package_of(ep)
            if pm.is_blocked(ep.name):
                continue
            if pm.get_plugin(ep.name) is not None:  # two packages declare one plugin name: keep the first, say so
                if _distributions.get(ep.name) != package:
                    warnings.warn(
                        f"compose_retrieval plugin name {ep.name!r} is declared by the packages "
                        f"{_distributions.get(ep.name)!r} and {package!r}; the second was skipped: uninstall one of them",
                        RuntimeWarning, stacklevel=2,
                    )
                continue
            if package:
                _distributions[ep.name] = package
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                _distributions.pop(ep.name, None)
                where = f"package {package!r}, " if package else ""
                _warn_at_plugin(
                    f"compose_retrieval plugin {ep.name!r} ({where}module {ep.value}) failed to import and was skipped: "
                    f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}; "
                    + (f"fix or uninstall it: pip uninstall {package}" if package else "fix it or remove its entry point"),
                    exc, ep.value,
                )
                continue
            pm.register(plugin, name=ep.name)
        _load_development_plugins(pm)
        _pm = pm
    return _pm


PLUGINS_ENV = "COMPOSE_RETRIEVAL_PLUGINS"


def _load_development_plugins(pm: pluggy.PluginManager) -> None:
    """Modules named in $COMPOSE_RETRIEVAL_PLUGINS (comma-separated, importable: on PYTHONPATH, say) are plugins of
    every process, the CLI's included: a plugin under development works before its package is installed."""
    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not module or pm.get_plugin(module) is not None:
            continue
        try:
            plugin = importlib.import_module(module)
        except Exception as exc:
            _warn_at_plugin(f"compose_retrieval plugin {module!r} (from ${PLUGINS_ENV}) failed to import and was skipped: "
                            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}; fix it or remove it from ${PLUGINS_ENV}",
                            exc, module)
            continue
        if not pm.is_registered(plugin):  # the same module may also be an installed entry point
            pm.register(plugin, name=module)


def plugin_package(plugin: str) -> str | None:
    """The installed package that declares the entry-point plugin ``plugin`` (None for one registered in-process)."""
    get_plugin_manager()
    return _distributions.get(plugin)


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


def _owners(entries: list[Registered]) -> str:
    return " and ".join(
        f"{e.plugin!r}" + (f" (package {_distributions[e.plugin]!r})" if e.plugin in _distributions else "") for e in entries
    )


def _choices(name: str, entries: list[Registered]) -> str:
    return " or ".join(f"{e.plugin}{QUALIFIER}{name}" for e in entries)


def _table(kind: str) -> _Table:
    if kind not in KINDS:
        raise UnknownNameError("kind", kind, difflib.get_close_matches(kind, KINDS), sorted(KINDS))
    if kind in _tables:
        return _tables[kind]
    pm = get_plugin_manager()
    found: dict[str, list[Registered]] = {}
    hook = getattr(pm.hook, KINDS[kind])
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(name: str, factory: Any, description: str | None = None, _plugin=plugin_name) -> None:
            if not isinstance(name, str) or not name or QUALIFIER in name:
                raise ComposeRetrievalError(f"{_display(kind)} name {name!r} is not a non-empty name without {QUALIFIER!r}")
            if any(e.plugin == _plugin for e in found.get(name, ())):
                raise ComposeRetrievalError(f"it registers the {_display(kind)} {name!r} twice")
            if description is None:
                description = _first_line(getattr(factory, "description", "") or inspect.getdoc(factory) or "")
            caller = traceback.extract_stack(limit=2)[0]  # the plugin's line that registers it, for a conflict's warning
            found.setdefault(name, []).append(Registered(name, factory, _plugin, description, {"at": (caller.filename, caller.lineno)}))

        try:
            impl.function(register=register)
        except Exception as exc:  # one bad plugin never disables the tool
            for entries in found.values():
                entries[:] = [e for e in entries if e.plugin != plugin_name]
            _warn_at_plugin(
                f"compose_retrieval plugin {plugin_name!r} failed in {KINDS[kind]} and its {plural(_display(kind))} were skipped: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}; {_what_to_do(plugin_name)}",
                exc, getattr(impl.plugin, "__name__", plugin_name),
            )
    table = _Table()
    for name, entries in sorted(found.items()):
        for e in entries:
            table.qualified[f"{e.plugin}{QUALIFIER}{name}"] = e
        if len(entries) == 1:
            table.unique[name] = entries[0]
        elif entries:
            table.ambiguous[name] = entries
            filename, lineno = entries[-1].extra["at"]
            warnings.warn_explicit(
                f"{_display(kind)} {name!r} is registered by {_owners(entries)}; the name is ambiguous until you "
                f"choose one with {_choices(name, entries)}, or uninstall one of them",
                RuntimeWarning, filename, lineno or 0, module=entries[-1].plugin,
            )
    _tables[kind] = table
    return table


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Sorted names of the registered components of ``kind`` matching a wildcard pattern.

    A name that two plugins register is listed in its qualified forms (``PLUGIN:NAME``), the ones that work.
    """
    table = _table(kind)
    names = [n for n in table.unique if fnmatch.fnmatchcase(n, pattern)]
    for bare, entries in table.ambiguous.items():
        for e in entries:
            qualified = f"{e.plugin}{QUALIFIER}{bare}"
            if fnmatch.fnmatchcase(bare, pattern) or fnmatch.fnmatchcase(qualified, pattern):
                names.append(qualified)
    return sorted(names)


def get_entry(kind: str, name: str) -> Registered:
    """The registry entry of ``name`` (or ``PLUGIN:NAME``).

    An unknown name raises UnknownNameError with suggestions; a name two plugins register
    raises DuplicateNameError saying how to choose one.
    """
    table = _table(kind)
    if name in table.unique:
        return table.unique[name]
    if name in table.qualified:
        return table.qualified[name]
    if name in table.ambiguous:
        entries = table.ambiguous[name]
        raise DuplicateNameError(
            f"{_display(kind)} {name!r} is registered by {_owners(entries)}; choose one: {_choices(name, entries)}"
        )
    names = list_components(kind)
    bare = name.rpartition(QUALIFIER)[2]
    close = difflib.get_close_matches(name, [*table.unique, *table.ambiguous, *table.qualified], n=3, cutoff=0.6) \
        or [n for n in table.qualified if n.endswith(QUALIFIER + bare)][:3]
    raise UnknownNameError(_display(kind), name, close, names)


def qualify(kind: str, name: str, plugin: str | None) -> str:
    """``PLUGIN:NAME`` when ``name`` is ambiguous and ``plugin`` is one of the plugins that register it (a checkpoint
    recorded which one made it), else ``name`` unchanged."""
    entries = _table(kind).ambiguous.get(name, [])
    return f"{plugin}{QUALIFIER}{name}" if any(e.plugin == plugin for e in entries) else name


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
                f" ({'give --data-root DIR' if key == 'data_root' else 'sizes follow --embed-dim and the encoders'})."
                f" Its options: {', '.join(settable) or 'none'}."
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
    entries = [(n, get_entry(kind, n)) for n in list_components(kind, pattern)]
    return [(n, e.description, e.plugin) for n, e in entries]


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
