"""Every benchmark and example imports what it names: a renamed module or helper fails here, not in a long run."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])


def check_imports(source: str) -> None:
    """Resolve the module-level imports of ``source`` the way running it would, without running it."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_level_imports_resolve(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(script.parent))  # benchmarks import their sibling `measure`
    check_imports(script.read_text())


def test_the_check_fails_on_a_name_that_is_gone() -> None:
    with pytest.raises(ImportError):
        check_imports("from fedproof.launch.nodes import free_port\n")
