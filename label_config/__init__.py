"""The contract between HALI and Label Studio.

Both ``preprocess`` (which writes tasks) and ``ml_backend`` (which reads annotations and writes
predictions) import this package; it imports neither.

- :mod:`label_config.config`: the labeling XML for any list of class names, with the reserved labels
  "Not a nucleus" (an answer the model learns) and "No class yet" (nobody decided); :class:`LabelSet`.
- :mod:`label_config.schema`: the task-data schema (a tile and its cells, in level-0 slide pixels).
- :mod:`label_config.regions`: cells <-> Label Studio regions (percent coordinates, region id = cell id).
- :mod:`label_config.serving`: model-version names and the scores that make Label Studio serve our order.

Exceptions::

    LabelConfigError(ValueError)
    +-- UnknownLabelError        a label that is not in the project's config
    +-- TaskDataError            task data that does not follow the schema
"""

from label_config.config import (
    FROM_NAME,
    LEGACY_NEUTRAL_LABEL,
    NEUTRAL_LABEL,
    NOT_NUCLEUS_LABEL,
    TO_NAME,
    LabelSet,
    build_label_config,
    parse_classes,
    parse_label_set,
    parse_mark,
)
from label_config.errors import LabelConfigError, TaskDataError, UnknownLabelError
from label_config.regions import (
    AnnotatedCells,
    cell_to_region,
    cells_to_regions,
    is_nucleus,
    nuclei_only,
    read_cell_labels,
    region_to_slide_box,
    region_to_slide_box_exact,
    validate_regions,
)
from label_config.schema import MARKS, CellBox, Mark, TileTask
from label_config.serving import parse_version_name, rank_to_score, version_name

__all__ = [
    "FROM_NAME",
    "LEGACY_NEUTRAL_LABEL",
    "MARKS",
    "NEUTRAL_LABEL",
    "NOT_NUCLEUS_LABEL",
    "TO_NAME",
    "AnnotatedCells",
    "CellBox",
    "LabelConfigError",
    "LabelSet",
    "Mark",
    "TaskDataError",
    "TileTask",
    "UnknownLabelError",
    "build_label_config",
    "cell_to_region",
    "cells_to_regions",
    "is_nucleus",
    "nuclei_only",
    "parse_classes",
    "parse_label_set",
    "parse_mark",
    "parse_version_name",
    "rank_to_score",
    "read_cell_labels",
    "region_to_slide_box",
    "region_to_slide_box_exact",
    "validate_regions",
    "version_name",
]
