"""The house rules, checked by walking the source: the engine names no plugin, its modules import no cycle, and
plugins use only the engine's public API (names in a module's ``__all__``), never another plugin's code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch

import compose_retrieval
from compose_retrieval import registry

from conftest import REPO_ROOT

ENGINE = REPO_ROOT / "compose_retrieval"
PLUGIN_FILES = sorted((REPO_ROOT / "plugins").rglob("*.py")) + sorted((REPO_ROOT / "examples").rglob("*.py"))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) of every import outside ``if TYPE_CHECKING:``, at any depth."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            found.append((target, [alias.name for alias in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _engine_modules() -> dict[str, Path]:
    return {_module_name(p, REPO_ROOT): p for p in ENGINE.rglob("*.py")}


def test_the_engine_imports_no_cycle():
    modules = _engine_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target, names, _ in _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
                    break
        graph[name] = edges - {"compose_retrieval"} if name != "compose_retrieval" else edges
    # a package's __init__ importing its own submodules is how a package is made, not a cycle
    graph = {m: {t for t in ts if not (modules[m].name == "__init__.py" and t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)


def test_every_engine_module_declares_its_public_names():
    for name in _engine_modules():
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__: list its public names"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_plugins_use_only_the_public_api_and_no_other_plugin():
    problems = []
    for path in PLUGIN_FILES:
        package_root = path.parent
        while (package_root.parent / "__init__.py").exists():
            package_root = package_root.parent
        own = (package_root.name if (package_root / "__init__.py").exists() else path.stem)
        module = _module_name(path, package_root.parent)
        for target, names, line in _runtime_imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            where = f"{path.relative_to(REPO_ROOT)}:{line}"
            top = target.split(".")[0]
            if top.startswith("compose_retrieval_") and top != own:
                problems.append(f"{where} imports another plugin, {target}")
            elif top == "compose_retrieval":
                if any(part.startswith("_") for part in target.split(".")):
                    problems.append(f"{where} imports the private module {target}")
                    continue
                public = getattr(importlib.import_module(target), "__all__", [])
                submodules = {p.stem for p in ENGINE.rglob("*.py")} | {p.name for p in ENGINE.iterdir() if p.is_dir()}
                private = [n for n in names if n not in public and n not in submodules]
                if private:
                    problems.append(f"{where} imports {', '.join(private)} from {target}, which is not in its __all__")
    assert not problems, "\n".join(problems)


def _builtin_component_names() -> set[str]:
    names = set()
    for kind in registry.KINDS:
        if kind != "pretrained":
            names.update(n for n, _, plugin in registry.describe(kind) if registry.plugin_package(plugin) == "compose-retrieval")
    return names


def test_the_engine_names_no_plugin():
    """No string in the engine's code (docstrings aside) is the name of a built-in component: defaults come from
    the recipe plugin, and the engine works with any set of plugins."""
    names = _builtin_component_names()
    assert {"tirg", "timm", "lstm", "css-synthetic", "soft_triplet", "cpu"} <= names
    devices = {"cpu", "cuda", "mps"}  # torch device types; "cpu" is also a recipe's name
    found = []
    for path in ENGINE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in names - devices:
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "the engine names plugins:\n" + "\n".join(found)
    assert str(torch.device("cpu")) in devices


def test_every_plugin_folder_is_a_package_of_the_distribution():
    """pyproject lists the packages (model_zoo/ is mapped into compose_retrieval): a new plugin folder must join them."""
    import tomllib

    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p.name for p in (REPO_ROOT / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(setuptools["packages"]), f"add {sorted(folders - set(setuptools['packages']))} to pyproject's packages"
    assert all(setuptools["package-dir"][name] == f"plugins/{name}" for name in folders)
    engine = {_module_name(p.parent, REPO_ROOT) for p in ENGINE.rglob("__init__.py")}
    assert engine <= set(setuptools["packages"]), f"add {sorted(engine - set(setuptools['packages']))} to pyproject's packages"
    assert setuptools["package-dir"]["compose_retrieval.model_zoo"] == "model_zoo"
    assert (REPO_ROOT / "model_zoo" / "manifest.json").is_file()
