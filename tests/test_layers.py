"""The layout's floors: every import points down (models/data < tasks < training < pipelines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "multimodal_doubleloop"

# What each part may not import (package-relative module prefixes).
FORBIDDEN = {
    "models": ("tasks", "training", "pipelines", "io", "commands", "data"),
    "data": ("tasks", "training", "pipelines", "io", "commands"),
    "tasks": ("training", "pipelines", "io", "commands"),
    "training": ("pipelines", "io", "commands"),
    "pipelines/ingestion": ("training",),
}


def _imports(path: Path) -> set[str]:
    """Package-relative modules a file imports (`..training.loop` -> `training.loop`)."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module[: len(module) - node.level])
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("multimodal_doubleloop."):
                found.add(node.module.removeprefix("multimodal_doubleloop."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("multimodal_doubleloop.") for a in node.names
                      if a.name.startswith("multimodal_doubleloop.")}
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_down(part):
    offending = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[part]):
                offending.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offending, offending


def test_models_import_no_kedro_or_mlflow():
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in names if m.split(".")[0] in ("kedro", "kedro_mlflow", "mlflow")}, path


def test_every_task_type_implements_the_protocol():
    from multimodal_doubleloop.tasks import TASK_TYPES
    from multimodal_doubleloop.tasks.base import Task

    members = [m for m in vars(Task) if not m.startswith("_")] + list(Task.__annotations__)
    for kind, cls in TASK_TYPES.items():
        assert cls.kind == kind
        missing = [m for m in members if m not in ("name", "cfg", "labels") and not hasattr(cls, m)]
        assert not missing, (kind, missing)
