"""Exceptions of the label_config package (tree in the package docstring)."""


class LabelConfigError(ValueError):
    """Base class: something does not match the Label Studio contract."""


class UnknownLabelError(LabelConfigError):
    """A label name that the project's labeling config does not define."""


class TaskDataError(LabelConfigError):
    """Task data that does not follow HALI's task schema."""
