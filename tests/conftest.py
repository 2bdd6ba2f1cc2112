"""Shared test setup: the repository root goes on ``sys.path`` so tests can import ``scripts.services``
(the packages themselves come from the editable install)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
