"""hpcdask.core makes decisions only: it must not import anything that does I/O or threading."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import hpcdask.core

pytestmark = pytest.mark.timeout(30)

FORBIDDEN = {
    "asyncio", "socket", "ssl", "selectors", "threading", "subprocess", "multiprocessing",
    "concurrent", "http", "urllib", "psutil", "msgpack", "pickle", "cloudpickle",
}  # fmt: skip
# What of hpcdask the core may use: itself, and the wire records (a leaf without imports).
ALLOWED_HPCDASK = ("hpcdask.core", "hpcdask.protocol.records")
CORE = Path(hpcdask.core.__file__).parent
MODULES = sorted(p for p in CORE.rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module imported anywhere in the tree (any scope)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            # __import__("x") and importlib.import_module("x") with a literal name
            f = node.func
            fname = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if fname in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value.split(".")[0])
    return names


def test_core_has_the_expected_modules():
    names = {p.stem for p in MODULES}
    assert {"scheduler_state", "scheduler_events", "worker_state", "placement"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_module_imports_and_uses_no_io(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = imported_modules(tree) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"


def hpcdask_imports(path: Path) -> set[str]:
    """Absolute names of the hpcdask modules a core module imports (relative ones resolved)."""
    tree = ast.parse(path.read_text())
    package = "hpcdask.core"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
                names.update([mod] if node.module else (f"{mod}.{a.name}" for a in node.names))
            elif (node.module or "").startswith("hpcdask"):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("hpcdask"))
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_module_imports_no_other_layer(path):
    bad = {m for m in hpcdask_imports(path) if not m.startswith(ALLOWED_HPCDASK)}
    assert not bad, f"{path.name} imports {sorted(bad)}; the core depends on nothing above it"


def test_every_core_module_imports():
    found = [m.name for m in pkgutil.walk_packages(hpcdask.core.__path__, "hpcdask.core.")]
    assert len(found) >= len([p for p in MODULES if p.name != "__init__.py"])
    for name in found:
        importlib.import_module(name)


def test_the_checker_sees_every_kind_of_import():
    src = """
import asyncio
import os.path
from socket import socket
from ssl import SSLContext as C
def f():
    import threading
    __import__("selectors")
    importlib.import_module("json")
from . import sibling
"""
    assert imported_modules(ast.parse(src)) == {
        "asyncio", "os", "socket", "ssl", "threading", "selectors", "json",
    }  # fmt: skip
