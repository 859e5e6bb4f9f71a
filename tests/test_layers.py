"""The package's layers, as docs/architecture.md draws them, hold in its imports.

Every ``import`` of an lcstore module anywhere in a module (at the top or inside a
function) is checked against :data:`ALLOWED`: kernels are pure computation, io reads and
writes formats, pipeline runs the build steps on Dask, query is the read API. A module may not
import another module's private (underscored) names.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lcstore"

BASE = frozenset({"errors", "schema"})

#: What each part of lcstore may import from lcstore. A part is a subpackage or a
#: top-level module; "lcstore" is the package itself (its public API).
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "schema": frozenset(),
    "kernels": BASE | {"kernels"},
    "io": BASE | {"kernels", "io"},
    "pipeline": BASE | {"kernels", "io", "pipeline"},
    "query": BASE | {"kernels", "io", "query"},
    "ops": BASE | {"kernels", "io", "pipeline", "query", "ops"},
    "simulate": BASE | {"kernels"},
    "analysis": BASE | {"lcstore", "kernels", "query"},
    "service": BASE | {"lcstore", "kernels", "io", "query", "service"},
    "cli": BASE | {"lcstore", "kernels", "io", "pipeline", "query", "ops", "service", "simulate"},
    "lcstore": BASE | {"lcstore", "query"},
}


def part_of(module: str) -> str:
    """The part of ``lcstore.a.b``: ``a`` (``lcstore`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lcstore"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_lcstore(module: str | None) -> bool:
    return module is not None and module.split(".")[0] == "lcstore"


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """Each lcstore import of a file: (line, module, names imported from it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if is_lcstore(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_lcstore(node.module):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import of the package under ``root`` that breaks the layering."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = part_of(me)
        allowed = ALLOWED.get(mine)
        if allowed is None:
            problems.append(f"{path}: part {mine!r} has no entry in ALLOWED")
            continue
        for line, module, names in imports_of(path):
            for name in names or [""]:
                # ``from lcstore import x`` imports the module lcstore.x, or a public name.
                submodule = bool(name) and ((root / f"{name}.py").is_file() or (root / name).is_dir())
                target = f"lcstore.{name}" if module == "lcstore" and submodule else module
                part = part_of(target)
                if part != mine and part not in allowed:
                    problems.append(f"{path}:{line}: {mine} imports {target} ({part})")
                if name.startswith("_") and not name.startswith("__") and target != me:
                    problems.append(f"{path}:{line}: imports the private name {name} of {module}")
    return problems


def test_the_layers_hold():
    assert violations() == []


def test_kernels_do_no_io_and_no_dask():
    """Kernels take arrays and return arrays: no files, Dask or DuckDB."""
    banned = {"dask", "distributed", "duckdb", "os", "shutil", "hats.io", "pyarrow.parquet"}
    found = []
    for path in sorted((PACKAGE / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n in banned or n.split(".")[0] in banned]
    assert found == []


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        ("kernels/bad.py", "from lcstore.pipeline import pipeline\n", "kernels imports lcstore.pipeline"),
        ("io/bad.py", "import lcstore.query.release\n", "io imports lcstore.query.release"),
        ("query/bad.py", "from lcstore.pipeline.write import x\n", "query imports lcstore.pipeline.write"),
        ("pipeline/bad.py", "def f():\n    from lcstore.ops import verify\n", "pipeline imports lcstore.ops"),
        ("pipeline/bad.py", "from lcstore.io.hats import _INT64_MIN\n", "private name _INT64_MIN"),
    ],
)
def test_a_violation_is_found(tmp_path, where, code, expected):
    """The check itself can fail: a copy of the package with one bad import breaks it."""
    copy = tmp_path / "lcstore"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / where).write_text(code)
    found = violations(copy)
    assert any(expected in v for v in found), found
