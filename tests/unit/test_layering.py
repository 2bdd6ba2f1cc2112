"""The data flows one way: label_config <- preprocess <- ml_backend, and the pure core imports no I/O library."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "label_config": {"preprocess", "ml_backend", "flask", "redis", "rq", "boto3", "openslide", "torch"},
    "preprocess": {"ml_backend", "flask", "redis", "rq"},
}
PURE_CORE = ["ml_backend/head.py", "ml_backend/coreset.py", "ml_backend/strategies.py", "ml_backend/ranking.py",
             "ml_backend/predictions.py", "ml_backend/labels.py", "preprocess/segment.py", "preprocess/tiling.py",
             "preprocess/tasks.py", "preprocess/tissue.py"]
IO_LIBS = {"flask", "redis", "rq", "boto3", "label_studio_sdk", "requests", "httpx"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_data_flow(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_does_no_io(module):
    path = ROOT / module
    if not path.exists():
        pytest.fail(f"{module} is missing")
    assert not (_imports(path) & IO_LIBS)
