"""The package layering of docs/ARCHITECTURE.md, checked on the source: which package may import
which (function-local imports included), no import cycle between modules, Ray only under sweep/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each package and the packages it may import: the layers of docs/ARCHITECTURE.md, bottom up.
MAY_IMPORT = {
    "errors": set(),
    "data_io": {"errors"},
    "models": {"errors"},
    "protocol": {"errors", "data_io", "models"},
    "engine": {"errors", "data_io", "models", "protocol"},
    "inference": {"errors", "data_io", "models", "protocol", "engine"},
    "sweep": {"errors", "data_io", "models", "protocol", "engine", "inference"},
    "analysis": {"errors", "data_io", "protocol"},
    "commands": {"errors", "data_io", "models", "protocol", "engine", "inference", "sweep", "analysis"},
}
RAY_ONLY_IN = "sweep"


def module_files() -> dict[str, Path]:
    modules = {}
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in the file, wherever it stands (top level or in a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            found.append((base, node.lineno))
    return found


def project_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, line in imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].setdefault(target, line)
    return graph


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in project_graph().items():
        package = module.split(".")[0]
        for target, line in targets.items():
            other = target.split(".")[0]
            if other != package and other not in MAY_IMPORT[package]:
                wrong.append(f"{module_files()[module].relative_to(ROOT)}:{line} imports {target} "
                             f"({package} may import {', '.join(sorted(MAY_IMPORT[package])) or 'nothing of ours'})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = project_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [node, target]) if target in path
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_ray_is_imported_only_in_the_sweep_layer():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for module, path in module_files().items() if not module.startswith(RAY_ONLY_IN + ".")
             for name, line in imported_names(module, path) if name.split(".")[0] == "ray"]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_the_layer_table_covers_every_package(package):
    assert (ROOT / package / "__init__.py").is_file()
