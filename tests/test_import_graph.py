"""The project's modules import one another in one direction: each package only the packages below it, and no
import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from project import ROOT

PACKAGES = ("handler", "common", "training", "scripts", "client", "benchmarks")
# The packages each one may import besides itself: they stand on floors, and an import only goes down. handler/ is
# packed into the model archive alone, so it imports no other; common/ holds what training and the tools both use
# (reading a .mar, drawing boxes), so that training/ imports neither scripts/ nor client/.
MAY_IMPORT = {
    "project": set(),
    "handler": set(),
    "common": set(),
    "client": {"common", "handler", "project"},
    "training": {"common", "handler", "project"},
    "scripts": {"client", "common", "handler", "project", "training"},
    "benchmarks": {"client", "common", "handler", "project", "scripts", "training"},
}


def project_imports(path: Path, module: str) -> set[str]:
    """The project modules that ``module`` (the file at ``path``) imports, at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y, from . import y
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES + ("project",))
    return found


def module_name(relative: Path) -> str:
    """The module a ``.py`` file (relative to the folder on ``sys.path``) is imported as: ``handler/tagging.py`` as
    ``handler.tagging``, ``handler/__init__.py`` as ``handler``."""
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the repository at ``root`` and the project modules it imports."""
    modules = {module_name(path.relative_to(root)): path
               for package in PACKAGES for path in (root / package).rglob("*.py")}
    modules["project"] = root / "project.py"
    return {module: {name for name in project_imports(path, module) if name in modules} - {module}
            for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def imports_going_up(graph: dict[str, set[str]]) -> list[str]:
    """Each import of ``graph`` into a package its package may not import (``MAY_IMPORT``), as "a.b -> c.d"."""
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]] | {module.split(".")[0]})


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_project_has_no_import_cycle():
    graph = module_graph()
    assert {"handler.tagging", "training.train", "scripts.serve", "client.tag", "project"} <= graph.keys()
    assert "handler.checkpoint" in graph["handler.tagging"]  # relative imports are resolved
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_imports_going_up_finds_training_leaning_on_the_tools():
    graph = {"training.train": {"scripts.model_archive", "common.model_archive", "training.engine"},
             "training.events": {"client.draw"}, "scripts.make_archive": {"training.checkpoints"},
             "handler.tagging": {"project"}}
    assert imports_going_up(graph) == ["handler.tagging -> project", "training.events -> client.draw",
                                       "training.train -> scripts.model_archive"]


def test_every_package_imports_only_the_packages_below_it():
    graph = module_graph()
    assert {package for module in graph for package in [module.split(".")[0]]} == set(MAY_IMPORT)
    assert imports_going_up(graph) == []
