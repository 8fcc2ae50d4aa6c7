"""The layer order: what may import what (any scope, not only module level).

    0  config, core, protocol.records       decisions and wire layouts; import nothing above
       utils.durations                      (a leaf: dask's duration syntax, for config)
    1  protocol                             encoding, the handshake, task specs
    2  comm.base, comm.registry, comm.addressing   the transport interface, address syntax
    3  security                             the secret, secret files, TLS credentials
    4  comm                                 transports, connect/listen with the handshake
    5  rpc, utils                           requests, batched streams
    6  scheduler, worker                    the servers, and what runs inside them: plugins,
                                            the dashboard, the diagnostics recorders
    7  client, deploy, jobqueue, mpi, cli, ... on top

A module may import its own layer and the layers below. The servers never import the client
side (client, deploy, jobqueue, mpi, cli). The lower layers have no import cycle at all, even
through imports inside functions, and each of their modules imports on its own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hpcdask

pytestmark = pytest.mark.timeout(120)

ROOT = Path(hpcdask.__file__).parent
LAYERS = [
    ("hpcdask.config", "hpcdask.core", "hpcdask.protocol.records", "hpcdask.utils.durations"),
    ("hpcdask.protocol",),
    ("hpcdask.comm.base", "hpcdask.comm.registry", "hpcdask.comm.addressing"),
    ("hpcdask.security",),
    ("hpcdask.comm",),
    ("hpcdask.rpc", "hpcdask.utils"),
    ("hpcdask.scheduler", "hpcdask.worker", "hpcdask.plugins", "hpcdask.dashboard",
     "hpcdask.diagnostics.collector", "hpcdask.diagnostics.recorder"),
]  # fmt: skip
CLIENT_SIDE = ("hpcdask.client", "hpcdask.deploy", "hpcdask.jobqueue", "hpcdask.mpi", "hpcdask.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    """The layer of a module: the most specific prefix listed wins; unlisted = the top."""
    best, best_len = len(LAYERS), -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def imports(path: Path) -> set[str]:
    """hpcdask modules imported anywhere in the file, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("hpcdask"):
                continue
            for alias in node.names:  # `from pkg import module` names a module
                sub = f"{mod}.{alias.name}"
                found = any((ROOT.parent / Path(*sub.split("."))).with_suffix(s).exists()
                            for s in (".py", "")) and alias.name != "*"  # fmt: skip
                out.add(sub if found else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hpcdask"))
    return {m for m in out if m != "hpcdask"} | (
        {"hpcdask.config"} if any(m == "hpcdask.config" for m in out) else set()
    )


MODULES = sorted(ROOT.rglob("*.py"))
GRAPH = {module_name(p): imports(p) for p in MODULES}


def test_the_checker_resolves_relative_and_package_imports():
    assert "hpcdask.protocol.records" in GRAPH["hpcdask.core.scheduler_events"]
    assert "hpcdask.config" in GRAPH["hpcdask.protocol.auth"]
    assert layer_of("hpcdask.comm.tcp") == 4 and layer_of("hpcdask.comm.base") == 2
    assert layer_of("hpcdask.protocol.records") == 0 and layer_of("hpcdask.client") == 7


@pytest.mark.parametrize("name", [n for n in GRAPH if layer_of(n) < len(LAYERS)])
def test_a_module_imports_only_its_layer_and_below(name):
    mine = layer_of(name)
    bad = sorted(m for m in GRAPH[name] if layer_of(m) > mine)
    assert not bad, f"{name} (layer {mine}) imports {bad} from above it"


@pytest.mark.parametrize("name", [n for n in GRAPH if n.startswith(("hpcdask.scheduler",
                                                                       "hpcdask.worker"))])  # fmt: skip
def test_the_servers_never_import_the_client_side(name):
    bad = sorted(m for m in GRAPH[name] if m.startswith(CLIENT_SIDE))
    assert not bad, f"{name} imports {bad}"


def test_no_import_cycle_in_the_lower_layers():
    low = {n for n in GRAPH if layer_of(n) <= 5}
    edges = {n: {m for m in GRAPH[n] if m in low and m != n} for n in low}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in edges[n]:
            if state.get(m) == 1:
                cycle = path[path.index(m) :] + [m] if m in path else [n, m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(low):
        if n not in state:
            visit(n, [n])


def test_each_lower_module_imports_on_its_own():
    names = sorted(n for n in GRAPH if layer_of(n) <= 4 and "ucx" not in n)
    code = "import importlib, sys\n" + "".join(
        f"importlib.import_module({n!r}); [sys.modules.pop(k) for k in list(sys.modules) "
        f"if k.startswith('hpcdask')]\n"
        for n in names
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=100)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
