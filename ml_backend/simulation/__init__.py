"""``hali simulate``: an oracle annotator replayed over labeled nuclei, measuring HALI's two claims.

- :mod:`.dataset` loads a cell table (image, x, y, class, optional split) and maps its classes;
- :mod:`.tasks` orders cells spatially and groups them into tasks, as preprocessing groups them into tiles;
- :mod:`.embedding` embeds each cell's patch with a named featurizer and caches the features;
- :mod:`.efficiency` replays the annotator task by task (the faster-annotator claim, 5.15x in the paper);
- :mod:`.effectiveness` trains on the first N labels collected (the better-dataset claim, +4.34%);
- :mod:`.paper` replays the paper's own efficiency protocol: one balanced ~200-cell patch, two classes;
- :mod:`.run` is the one orchestration function; :mod:`.plots` draws the figures when matplotlib exists.

Exceptions::

    BackendError
    +-- SimulationError   a cell table, image or option the simulation cannot use
"""

from ml_backend.errors import BackendError


class SimulationError(BackendError):
    """A cell table, image folder or option that the simulation cannot use."""
