"""The project's modules import one another in one direction: no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from project import ROOT

PACKAGES = ("handler", "training", "scripts", "client", "benchmarks")


def project_imports(path: Path, module: str) -> set[str]:
    """The project modules that ``module`` (the file at ``path``) imports, at any depth of its code."""
    package = module.rpartition(".")[0]
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


def module_graph() -> dict[str, set[str]]:
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts): path
               for package in PACKAGES for path in (ROOT / package).glob("*.py") if path.name != "__init__.py"}
    modules["project"] = ROOT / "project.py"
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


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_project_has_no_import_cycle():
    graph = module_graph()
    assert {"handler.tagging", "training.train", "scripts.serve", "client.tag", "project"} <= graph.keys()
    assert "handler.checkpoint" in graph["handler.tagging"]  # relative imports are resolved
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
