"""The layout's import picture: entry points (stages, tools) on top of the library (meddialog),
never the other way round, and no import cycles inside the library."""
import pytest

from tests.imports import imported_modules, project_modules

MODULES = project_modules()


def package(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("module", [m for m in MODULES if package(m) == "meddialog"])
def test_the_library_never_imports_an_entry_point(module):
    """meddialog runs stages only as processes (`python -m stages.<name>`), never by import."""
    assert not {m for m in imported_modules(module) if package(m) != "meddialog"}


@pytest.mark.parametrize("module", [m for m in MODULES if package(m) in ("stages", "tools")])
def test_entry_points_import_only_the_library(module):
    """A stage or tool that needs another one's code means that code belongs in meddialog (tools may
    share a tools module, e.g. the GPU smoke using the GPU check)."""
    allowed = {"meddialog", "tools"} if package(module) == "tools" else {"meddialog"}
    assert {package(m) for m in imported_modules(module)} <= allowed


def cycle_from(start: str, imports=imported_modules) -> list[str] | None:
    """An import path that leads from `start` back to it, if any (imports inside functions included)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        module, path = stack.pop()
        for name in sorted(imports(module)):
            if name == start:
                return path + [name]
            if name not in seen:
                seen.add(name)
                stack.append((name, path + [name]))
    return None


@pytest.mark.parametrize("module", [m for m in MODULES if package(m) == "meddialog"])
def test_no_import_cycles_in_the_library(module):
    cycle = cycle_from(module)
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_search_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    imports = lambda m: graph.get(m, set())  # noqa: E731
    assert cycle_from("a", imports) == ["a", "b", "c", "a"] and cycle_from("d", imports) is None


def test_imports_for_annotations_only_are_not_edges():
    import ast

    from tests.imports import runtime_nodes

    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\nimport c\n")
    names = {alias.name for node in runtime_nodes(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert names == {"b", "c"}
