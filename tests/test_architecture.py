"""The package's shape, read from its source with `ast`: layers import downward only, no import cycles between files,
shanshui's own imports at module level, and modules and functions of readable size (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "shanshui"

# Lower number = lower layer. A module may import its own package and packages of lower layers, never higher ones.
LAYERS = {
    "shanshui": 0, "errors": 0, "models": 0,  # the package root (__version__), the one exception type, shipped model
    "fsutil": 1, "metrics": 1, "weights": 1, "onnxrt": 1, "pngmeta": 1,  # foundation
    "limits": 1, "integrity": 1,  # every input range and its checks; hashes, paths inside folders, finite outputs
    "spec": 2, "data": 2, "env": 2,  # torch-free description of every folder and tensor; training paintings; settings
    "hf": 3,  # the torch side of a diffusers folder
    "engines": 4,
    "runtime": 5,
    "export": 6, "eval": 6,  # producers that use the runtime and are never imported by it
    "quantize": 7,
    "train": 8,
    "bench": 9, "serve": 9,
    "cli": 10,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for m, p in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The shanshui module an imported dotted name lives in (`shanshui.a.b.func` -> `shanshui.a.b`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, tree: ast.Module | None = None) -> list[tuple[str, ast.stmt]]:
    """(imported shanshui module, import node) for every import anywhere in `module`, function-level ones included."""
    is_pkg = MODULES[module].name == "__init__.py"
    out = []
    for node in ast.walk(tree or TREES[module]):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            target = _resolve(n) if n.split(".")[0] == "shanshui" else None
            if target and target != module:
                out.append((target, node))
    return out


GRAPH = {m: sorted({t for t, _ in _imports(m)}) for m in MODULES}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "shanshui"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), plus self-loops."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    missing = sorted({_package(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"add {missing} to LAYERS here and to docs/architecture.md"


def test_no_import_cycles_between_files():
    assert _cycles(GRAPH) == []


def test_no_import_cycles_between_packages():
    packages = {}
    for m, targets in GRAPH.items():
        packages.setdefault(_package(m), set()).update(_package(t) for t in targets if _package(t) != _package(m))
    assert _cycles({k: sorted(v) for k, v in packages.items()}) == []


def test_layers_import_downward_only():
    upward = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
              if _package(t) != _package(m) and LAYERS.get(_package(t), 99) >= LAYERS.get(_package(m), 99)]
    assert upward == []


def test_own_modules_are_imported_at_module_level():
    """Function-level imports are for heavy libraries (torch, onnx, tensorrt …) only, never for shanshui's modules."""
    hidden = []
    for m, tree in TREES.items():
        top = {id(n) for n in tree.body}
        hidden += [f"{m}:{node.lineno} imports {t}" for t, node in _imports(m) if id(node) not in top]
    assert hidden == []


def test_modules_are_at_most_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_functions_are_at_most_60_lines():
    long = [f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for m, tree in TREES.items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": ["b"], "b": ["a"]}, [["a", "b"]]),
    ({"a": ["b"], "b": ["c"], "c": []}, []),
    ({"a": ["a"]}, [["a"]]),
])
def test_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_import_reader_sees_function_level_and_relative_imports():
    tree = ast.parse("import shanshui.fsutil\ndef f():\n    from shanshui.spec.contract import components\n"
                     "    from .manifest import MANIFEST\n    from . import foreign\n")
    found = {t for t, _ in _imports("shanshui.spec.source", tree)}
    assert found == {"shanshui.fsutil", "shanshui.spec.contract", "shanshui.spec.manifest", "shanshui.spec.foreign", "shanshui.spec"}
