"""How HALI steers Label Studio's queue: model-version names and rank-encoding scores.

Label Studio (OSS) serves the next task by "Uncertainty sampling": among tasks holding a prediction whose
``model_version`` equals the project's, the LOWEST prediction score first. HALI writes one prediction per
task per model version whose score encodes the task's rank, then switches the project to that version.
"""

from __future__ import annotations

import re

import numpy as np

_VERSION_RE = re.compile(r"^hali-v(\d{4,})$")


def version_name(version: int) -> str:
    """``hali-v0007`` for 7: zero-padded so that string order is numeric order."""
    if version < 0:
        raise ValueError(f"model version must be >= 0, got {version}")
    return f"hali-v{version:04d}"


def parse_version_name(name: str | None) -> int | None:
    """7 for ``hali-v0007``; None for anything HALI did not name."""
    m = _VERSION_RE.match(name or "")
    return int(m.group(1)) if m else None


def rank_to_score(n_tasks: int) -> np.ndarray:
    """Scores for ranks ``0..n_tasks-1``, float64 in [0, 1), strictly increasing (rank 0 is served first)."""
    return np.arange(n_tasks, dtype=np.float64) / max(n_tasks, 1)
