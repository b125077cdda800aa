"""The learning core imports torch and torchvision only, so it runs on a bare GPU machine."""

import subprocess
import sys

MLOPS = ("prefect", "mlflow", "dvc", "great_expectations", "boto3", "pydantic")


def test_importing_the_core_pulls_in_no_mlops_package():
    code = (
        "import sys, pkgutil, importlib, unlearn\n"
        "for m in pkgutil.walk_packages(unlearn.__path__, 'unlearn.'): importlib.import_module(m.name)\n"
        f"print(' '.join(m for m in {MLOPS!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def _imported_modules(path) -> set[str]:
    """Every module a file imports, at its top or inside functions (`from . import x` resolved)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_rooms_of_tasks_import_one_way():
    """adapters import no stage or service; stages import no service (tasks/__init__.py says why)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tasks"
    forbidden = {"adapters": ("tasks.stages", "tasks.production"), "stages": ("tasks.production",)}
    wrong = [
        f"{path.relative_to(root.parent)} imports {module}"
        for room, banned in forbidden.items()
        for path in sorted((root / room).glob("*.py"))
        for module in sorted(_imported_modules(path))
        if module.startswith(banned)
    ]
    assert wrong == []
    assert sorted(p.name for p in root.glob("*.py")) == ["__init__.py"]  # every module lives in a room
