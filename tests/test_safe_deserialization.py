"""No code path can unpickle or evaluate outside bytes: the package is searched for every way to do it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedproof", "fl_server", "fl_client", "privacy", "ledger")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def unsafe_uses(source: str) -> list[str]:
    """Every pickle import, eval/exec, torch.load without weights_only=True, np.load with allow_pickle not False."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
                   for n in names):
                found.append(f"line {node.lineno}: imports a pickle-like module")
    for node, owner, name in _calls(tree):
        keywords = {k.arg: k.value for k in node.keywords}
        if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
            found.append(f"line {node.lineno}: {name}()")
        if owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and name == "load":
            flag = keywords.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"line {node.lineno}: np.load without allow_pickle=False")
        if owner in ("pd", "pandas") and name == "read_pickle":
            found.append(f"line {node.lineno}: pandas.read_pickle")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_never_unpickles_or_evaluates(package: str) -> None:
    problems = {str(path.relative_to(ROOT)): unsafe_uses(path.read_text())
                for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: p for path, p in problems.items() if p} == {}


@pytest.mark.parametrize(
    "snippet",
    ["import pickle", "from pickle import loads", "eval(data)", "torch.load(f)", "torch.load(f, weights_only=False)",
     "np.load(f)", "np.load(f, allow_pickle=True)", "import cloudpickle"],
)
def test_the_search_catches_each_unsafe_form(snippet: str) -> None:
    assert unsafe_uses(snippet)


def test_the_search_accepts_the_safe_forms() -> None:
    assert not unsafe_uses("torch.load(f, weights_only=True)\nnp.load(f, allow_pickle=False)\nmodel.eval()\n"
                           "Wrapper(model).eval()\nast.literal_eval(text)")
