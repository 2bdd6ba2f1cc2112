"""The data flows one way, following every import, direct or through other modules:

    adapters, label_config  <-  preprocess  <-  ml_backend

- ``label_config`` and ``adapters`` import nothing of the project but themselves;
- ``preprocess`` imports ``label_config`` and ``adapters``, never ``ml_backend``;
- each I/O library is imported only by the adapter modules that wrap it;
- the pure core reaches no I/O library through any chain of imports;
- the Flask server does not load the offline simulation, nor matplotlib at start-up: the dashboard's plots
  module (matplotlib) is imported inside the PNG routes only (``LAZY_IMPORTS``).

Imports inside functions count; imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adapters", "label_config", "preprocess", "ml_backend")
ALLOWED_PROJECT_IMPORTS = {
    "adapters": {"adapters"},
    "label_config": {"label_config"},
    "preprocess": {"preprocess", "label_config", "adapters"},
    "ml_backend": {"ml_backend", "preprocess", "label_config", "adapters"},
}
# I/O library -> the only modules (file or folder prefixes) that may import it directly.
IO_HOMES = {
    "label_studio_sdk": ("adapters/label_studio.py",
                         # LabelInterface only parses a labeling config (no I/O): the contract checks predictions with it
                         "label_config/regions.py"),
    "boto3": ("adapters/storage.py",),
    "botocore": ("adapters/storage.py",),
    "openslide": ("adapters/slide_reader.py",),
    "flask": ("ml_backend/http/",),
    "gunicorn": ("ml_backend/http/server.py",),
    "werkzeug": ("ml_backend/http/",),
    "redis": ("ml_backend/http/app.py", "ml_backend/labels/redis_store.py", "ml_backend/retrain/job.py",
              "ml_backend/worker.py", "preprocess/queue/", "preprocess/cli.py"),
    "rq": ("ml_backend/http/app.py", "ml_backend/retrain/job.py", "ml_backend/worker.py", "preprocess/queue/",
           "preprocess/cli.py"),
    "requests": (),
    "httpx": ("adapters/label_studio.py",),  # the SDK's transport: its errors and timeouts
    "matplotlib": ("ml_backend/simulation/plots.py", "ml_backend/dashboard/plots.py"),
}
# Imported only inside a function, on the first request that needs it: the server starts and runs without it
# (matplotlib costs about a second and 40 MB; only a dashboard viewer pays for it).
LAZY_IMPORTS = {"ml_backend.http.dashboard": frozenset({"ml_backend.dashboard.plots"})}
PURE_CORE = [
    "label_config/regions.py", "label_config/schema.py", "label_config/serving.py",
    "preprocess/nuclei/segment.py", "preprocess/nuclei/tissue.py", "preprocess/tiles/tiling.py",
    "preprocess/tiles/tasks.py", "preprocess/tiles/regions.py",
    "ml_backend/model/head.py", "ml_backend/model/training.py", "ml_backend/ordering/coreset.py",
    "ml_backend/ordering/strategies.py", "ml_backend/ordering/ranking.py", "ml_backend/ordering/relevance.py",
    "ml_backend/suggestions/predictions.py", "ml_backend/labels/records.py", "ml_backend/http/webhook.py",
    "ml_backend/model/gold.py", "ml_backend/dashboard/metrics.py", "ml_backend/dashboard/snapshot.py",
    "ml_backend/dashboard/coverage.py", "ml_backend/dashboard/summary.py", "ml_backend/dashboard/page.py",
    "ml_backend/labels/lineage.py", "ml_backend/labels/agreement.py",
]
PURE_PARSERS = ("label_studio_sdk.label_interface",)  # what the pure core may take from an I/O library


def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = _module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def _imports(module: str) -> frozenset[str]:
    """Dotted names ``module`` imports (absolute), TYPE_CHECKING blocks left out."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(MODULES[module].read_text()))
    return frozenset(names)


def _project_deps(module: str) -> set[str]:
    """Project modules ``module`` imports directly (a package import counts as its ``__init__``)."""
    return {name for name in _imports(module) if name in MODULES and name != module}


@cache
def _closure(module: str, skip_lazy: bool = False) -> frozenset[str]:
    """Every project module ``module`` loads, through any chain of imports (itself included); with
    ``skip_lazy``, the function-level imports of ``LAZY_IMPORTS`` are not followed."""
    seen, todo = {module}, [module]
    while todo:
        current = todo.pop()
        lazy = LAZY_IMPORTS.get(current, frozenset()) if skip_lazy else frozenset()
        for dep in _project_deps(current) - lazy:
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parents = {".".join(dep.split(".")[:i]) for i in range(1, dep.count(".") + 1)}
            for name in {dep} | (parents & set(MODULES)):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
    return frozenset(seen)


def _third_party(modules: frozenset[str]) -> set[str]:
    return {name for m in modules for name in _imports(m) if name.split(".")[0] not in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_reach_only_the_layers_below_them(package):
    allowed = ALLOWED_PROJECT_IMPORTS[package]
    for module in (m for m in MODULES if m.split(".")[0] == package):
        bad = {m for m in _closure(module) if m.split(".")[0] not in allowed}
        assert not bad, f"{module} loads {sorted(bad)} ({package} may reach only {sorted(allowed)})"


@pytest.mark.parametrize("library", sorted(IO_HOMES))
def test_io_libraries_are_imported_only_by_their_adapters(library):
    for module, path in MODULES.items():
        rel = path.relative_to(ROOT).as_posix()
        if any(name.split(".")[0] == library for name in _imports(module)):
            assert rel.startswith(IO_HOMES[library]), f"{rel} imports {library}; only {IO_HOMES[library]} may"


@pytest.mark.parametrize("path", PURE_CORE)
def test_pure_core_reaches_no_io_library(path):
    module = ".".join(Path(path).with_suffix("").parts)
    assert module in MODULES, f"{path} is missing"
    reached = {name for name in _third_party(_closure(module)) if not name.startswith(PURE_PARSERS)}
    bad = {name.split(".")[0] for name in reached} & set(IO_HOMES)
    assert not bad, f"{path} reaches {sorted(bad)} through {sorted(_closure(module))}"


def test_the_server_does_not_load_the_simulation():
    loaded = _closure("ml_backend.http.app") | _closure("ml_backend.worker")
    assert not {m for m in loaded if m.startswith("ml_backend.simulation")}
    at_start = _closure("ml_backend.http.app", skip_lazy=True) | _closure("ml_backend.worker", skip_lazy=True)
    assert "matplotlib" not in {name.split(".")[0] for name in _third_party(at_start)}


@pytest.mark.parametrize("module", sorted(LAZY_IMPORTS))
def test_lazy_imports_happen_inside_functions_only(module):
    top_level = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Import):
            top_level.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    assert not top_level & LAZY_IMPORTS[module], f"{module} imports {sorted(LAZY_IMPORTS[module])} at module level"


def test_the_walker_sees_chains_of_imports():
    """A check on the checker: the backend's app reaches the Label Studio gateway only through other modules."""
    assert "adapters.label_studio" not in _project_deps("ml_backend.http.app")
    assert "adapters.label_studio" in _closure("ml_backend.http.app")
