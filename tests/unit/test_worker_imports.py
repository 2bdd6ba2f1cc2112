"""A worker's imports: what it loads at start-up stays resident, so the heavy libraries it rarely needs load
inside the functions that need them (torchvision: about 170 MB, only to embed a cell drawn by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_does_not_load_torchvision_at_start_up():
    code = ("import sys; import ml_backend.worker, ml_backend.retrain.run, ml_backend.suggestions.drawn_cells; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
