"""The import contract of docs/architecture.md, read from the source with `ast` (nothing is imported).

- the engine (`sync`) never imports the gateway or `aiohttp.web`;
- the gateway imports the engine only through its declared API: `from sync import NAME`, NAME in `sync.__all__`;
- product code never imports the GitLab simulator; only the `demo` command (gateway/cli/demo_cmds.py) does;
- the write side (`sync.ingest`) and the read side (`sync.read`) never import each other: what both need
  is declared beside them (sync/types.py, sync/shape.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR = "gateway.simulator"
# The one product module allowed to start the simulator: `lore-gateway demo` runs against it.
SIMULATOR_USERS = {"gateway/cli/demo_cmds.py"}
# The write model and the read model: neither package may import the other.
SIDES = {"sync/ingest/": "sync.read", "sync/read/": "sync.ingest"}


def engine_api(root: Path = ROOT) -> set[str]:
    """The names in sync/__init__.py's `__all__`, read without importing the package."""
    tree = ast.parse((root / "sync" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {ast.literal_eval(element) for element in node.value.elts}  # type: ignore[attr-defined]
    raise AssertionError("sync/__init__.py declares no __all__")


def imports(source: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) for every import statement, nested ones included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the project uses absolute imports only; a relative one would dodge these rules
                yield node.lineno, "." * node.level + (node.module or ""), ()
            else:
                yield node.lineno, node.module or "", tuple(alias.name for alias in node.names)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(path: str, source: str, api: set[str]) -> list[str]:
    """What in one file (a repository-relative path) breaks the contract, one message a broken rule."""
    found = []
    for line, module, names in imports(source):
        where = f"{path}:{line}"
        if module.startswith("."):
            found.append(f"{where}: relative import {module!r}; import absolutely")
        if path.startswith("sync/"):
            if _within(module, "gateway"):
                found.append(f"{where}: the engine imports the gateway ({module})")
            if _within(module, "aiohttp.web") or (module == "aiohttp" and "web" in names):
                found.append(f"{where}: the engine imports aiohttp.web")
        for side, other in SIDES.items():
            if path.startswith(side) and _within(module, other):
                found.append(f"{where}: {side.rstrip('/')} imports {module}; the write and read sides stay apart")
        if path.startswith("gateway/") and _within(module, "sync"):
            if module != "sync":
                found.append(f"{where}: {module} is private to the engine; import from `sync` (its __all__)")
            for name in names:
                if name not in api:
                    found.append(f"{where}: sync.{name} is not in the engine's API (sync/__init__.py __all__)")
        product = path.startswith(("sync/", "gateway/")) and not path.startswith("gateway/simulator/")
        if product and path not in SIMULATOR_USERS:
            if _within(module, SIMULATOR) or (module == "gateway" and "simulator" in names):
                found.append(f"{where}: product code imports the GitLab simulator ({module})")
    return found


def source_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for package in ("sync", "gateway") for p in (ROOT / package).rglob("*.py"))


def test_the_engine_api_names_only_what_the_engine_exports() -> None:
    import sync

    assert sorted(name for name in engine_api() if not hasattr(sync, name)) == []


@pytest.mark.parametrize("path", source_files())
def test_every_module_keeps_the_import_contract(path: str) -> None:
    assert violations(path, (ROOT / path).read_text(encoding="utf-8"), engine_api()) == []


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        ("sync/control/scheduler.py", "from gateway.app import create_app", "the engine imports the gateway"),
        ("sync/read/queries.py", "from aiohttp import web", "the engine imports aiohttp.web"),
        ("sync/store/db.py", "def f():\n    import aiohttp.web\n", "the engine imports aiohttp.web"),
        ("gateway/api.py", "from sync.read.queries import Kind", "private to the engine"),
        ("gateway/api.py", "from sync import _private_helper", "not in the engine's API"),
        ("gateway/api.py", "import sync.store.db", "private to the engine"),
        ("gateway/app.py", "from gateway.simulator.gitlab import GitLabSimulator", "imports the GitLab simulator"),
        ("sync/ingest/pipeline.py", "from gateway import simulator", "imports the GitLab simulator"),
        ("gateway/sse.py", "from . import keys", "relative import"),
        ("sync/ingest/mirror.py", "from sync.read.queries import item_fragment", "the write and read sides"),
        ("sync/read/queries.py", "from sync.ingest import mirror", "the write and read sides"),
    ],
)
def test_a_broken_rule_is_reported(path: str, source: str, broken: str) -> None:
    (message,) = [m for m in violations(path, source, engine_api()) if broken in m]
    assert message.startswith(f"{path}:")


def test_the_demo_command_and_the_simulator_itself_may_use_the_simulator() -> None:
    source = "from gateway.simulator.demo import build_simulator"
    assert violations("gateway/cli/demo_cmds.py", source, engine_api()) == []
    assert violations("gateway/simulator/gitlab.py", "from gateway.simulator.data import Seed", engine_api()) == []
