"""The project's import graph, read from the source (nothing is imported): used by the stage-deps and
layout tests."""
import ast
from pathlib import Path

from tests.conftest import REPO

PROJECT_PACKAGES = ("stages", "meddialog", "tools")


def module_file(module: str) -> Path | None:
    """The project file of a dotted module name, None for a package (its __init__ is empty) or a name
    that is not a module (`from meddialog.modeling.loading import load_model` names a function)."""
    path = REPO / Path(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(module: str) -> set[str]:
    """The project modules `module` imports (at module level or inside functions), as dotted names.
    Imports under `if TYPE_CHECKING:` are left out: they are annotations, never run."""
    tree = ast.parse(module_file(module).read_text())
    found = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROJECT_PACKAGES:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from meddialog import cli`
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in PROJECT_PACKAGES}
    return {name for name in found if module_file(name)}


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those inside an `if TYPE_CHECKING:` block."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def project_modules() -> list[str]:
    """Every module of the three packages, as dotted names."""
    return sorted(".".join(f.relative_to(REPO).with_suffix("").parts)
                  for package in PROJECT_PACKAGES for f in (REPO / package).rglob("*.py") if f.name != "__init__.py")
