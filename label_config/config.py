"""The labeling config: RectangleLabels (KeyPointLabels with ``mark="keypoint"``) on the tile image, one label
per class.

Every cell box is pre-drawn with the neutral label :data:`NEUTRAL_LABEL` until a model (or a person)
gives it a class. Hotkey ``0`` is the neutral label and ``1..9`` the classes, so a pathologist clicks a box
and presses a digit.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from label_config.errors import LabelConfigError
from label_config.schema import Mark

NEUTRAL_LABEL = "Unclassified"
FROM_NAME = "cell"
TO_NAME = "image"

# Colour-blind-safe palette (Okabe-Ito), then a few extra distinct colours.
_PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#7F3C8D", "#11A579", "#3969AC",
)
_NEUTRAL_COLOUR = "#9E9E9E"

# How cells are marked (docs/tasks.md): a box (today's default), or a dot at the centre, which never piles up.
_MARK_TAGS = {"rectangle": "RectangleLabels", "keypoint": "KeyPointLabels"}
_MARK_ATTRS = {"rectangle": 'strokeWidth="2" opacity="0.15"', "keypoint": 'strokeWidth="2"'}


def build_label_config(classes: Sequence[str], mark: Mark = "rectangle") -> str:
    """Return the Label Studio XML config for these cell classes, each cell marked by ``mark``.

    Raises :class:`LabelConfigError` for an empty list, duplicates, blank names, the reserved neutral
    label, or more than 9 classes (each class needs its own digit hotkey).
    """
    names = _check_classes(classes)
    labels = [_label_xml(NEUTRAL_LABEL, _NEUTRAL_COLOUR, "0")]
    labels += [_label_xml(n, _PALETTE[i % len(_PALETTE)], str(i + 1)) for i, n in enumerate(names)]
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>\n'
        f'  <{_MARK_TAGS[mark]} name="{FROM_NAME}" toName="{TO_NAME}" {_MARK_ATTRS[mark]}>\n'
        + "".join(f"    {lab}\n" for lab in labels)
        + f"  </{_MARK_TAGS[mark]}>\n</View>\n"
    )


def parse_classes(config_xml: str) -> list[str]:
    """Return the class names (neutral label excluded) of a config made by :func:`build_label_config`."""
    try:
        root = ET.fromstring(config_xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML ({exc}); pass the project's label_config") from exc
    block = _mark_block(root)
    if block is None:
        raise LabelConfigError(
            f"label config has no <RectangleLabels name='{FROM_NAME}'>; create the project with "
            "label_config.build_label_config(classes)"
        )
    return [lab.get("value", "") for lab in block.findall("Label") if lab.get("value") != NEUTRAL_LABEL]


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c).strip() for c in classes]
    if not names:
        raise LabelConfigError("no cell classes given; pass at least one, e.g. --classes Tumor,Lymphocyte,Other")
    if any(not n for n in names):
        raise LabelConfigError(f"blank class name in {list(classes)!r}; remove empty entries")
    if len(set(names)) != len(names):
        raise LabelConfigError(f"duplicate class names in {names!r}; each class must be named once")
    if NEUTRAL_LABEL in names:
        raise LabelConfigError(f"{NEUTRAL_LABEL!r} is reserved for not-yet-classified cells; rename that class")
    if len(names) > 9:
        raise LabelConfigError(f"{len(names)} classes given; at most 9 fit on the digit hotkeys 1-9")
    return names


def _label_xml(value: str, colour: str, hotkey: str) -> str:
    return f"<Label value={quoteattr(value)} background={quoteattr(colour)} hotkey={quoteattr(hotkey)}/>"


def parse_mark(config_xml: str) -> Mark:
    """How a config made by :func:`build_label_config` marks cells: ``rectangle`` or ``keypoint``."""
    block = _mark_block(ET.fromstring(config_xml))
    return next((m for m, tag in _MARK_TAGS.items() if block is not None and block.tag == tag), "rectangle")


def _mark_block(root: ET.Element) -> ET.Element | None:
    blocks = (root.find(f".//{tag}[@name='{FROM_NAME}']") for tag in _MARK_TAGS.values())
    return next((b for b in blocks if b is not None), None)
