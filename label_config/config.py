"""The labeling config: RectangleLabels (KeyPointLabels with ``mark="keypoint"``) on the tile image, one label
per class, plus two reserved labels.

What a pathologist sees at the top of the labeling view, for classes ``Positive, Negative``::

    Click a box, then press 1-2 for its class, or 0 if it is not a nucleus (deleting the box also says so).
    Submit accepts every box as shown; grey "No class yet" boxes count for nothing.
    [Positive 1] [Negative 2] [Not a nucleus 0] [No class yet n]

- The classes, on hotkeys ``1..9`` in the order given, each in its own colour.
- :data:`NOT_NUCLEUS_LABEL` (``"Not a nucleus"``, hotkey ``0``, black): an answer like any class. The
  model learns it (as the last class, :attr:`LabelSet.targets`) and suggests it; such cells are left out
  of the queue ranking and of exports (:func:`label_config.regions.nuclei_only`).
- :data:`NEUTRAL_LABEL` (``"No class yet"``, hotkey ``n``, grey): a box nobody has classified. Before the
  first model every box is drawn with it; a box submitted still carrying it labels nothing, so it is
  also how a pathologist leaves one box undecided. Its hotkey is a letter on purpose: Label Studio gives a
  label without a hotkey the next free key of ``1234567890q...``, a digit that would look like a class.

Projects made before "Not a nucleus" existed have ``"Unclassified"`` on hotkey 0 as their neutral label
and no not-a-nucleus label. :func:`parse_label_set` reads them (``not_nucleus=False``,
``neutral="Unclassified"``) and every caller keeps the old behaviour for them: nothing suggests or
records "Not a nucleus" in a project whose config cannot show it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from label_config.errors import LabelConfigError
from label_config.schema import Mark

NOT_NUCLEUS_LABEL = "Not a nucleus"
NEUTRAL_LABEL = "No class yet"
LEGACY_NEUTRAL_LABEL = "Unclassified"  # the neutral label of configs made before NOT_NUCLEUS_LABEL
RESERVED_LABELS = (NOT_NUCLEUS_LABEL, NEUTRAL_LABEL, LEGACY_NEUTRAL_LABEL)
FROM_NAME = "cell"
TO_NAME = "image"

# Colour-blind-safe palette (Okabe-Ito), then a few extra distinct colours.
_PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#7F3C8D", "#11A579", "#3969AC",
)
_NOT_NUCLEUS_COLOUR = "#000000"
_NEUTRAL_COLOUR = "#9E9E9E"
_NOT_NUCLEUS_HOTKEY = "0"
_NEUTRAL_HOTKEY = "n"


@dataclass(frozen=True)
class LabelSet:
    """The labels of a project's config.

    ``classes``: the real cell classes, in hotkey order. ``not_nucleus``: the config offers
    :data:`NOT_NUCLEUS_LABEL` (False only for configs made before it existed). ``neutral``: the name of
    the neutral label in this config (:data:`NEUTRAL_LABEL`, or :data:`LEGACY_NEUTRAL_LABEL`).
    """

    classes: tuple[str, ...]
    not_nucleus: bool = True
    neutral: str = NEUTRAL_LABEL

    @property
    def targets(self) -> tuple[str, ...]:
        """What the model learns and suggests, in its output order: the classes, then "Not a nucleus"."""
        return self.classes + ((NOT_NUCLEUS_LABEL,) if self.not_nucleus else ())


def instructions(classes: Sequence[str]) -> str:
    """The one-line instruction shown above the tile (a ``<Header>``)."""
    keys = "1" if len(classes) == 1 else f"1-{len(classes)}"
    return (f"Click a box, then press {keys} for its class, or {_NOT_NUCLEUS_HOTKEY} if it is not a nucleus "
            f"(deleting the box also says so). Submit accepts every box as shown; "
            f'grey "{NEUTRAL_LABEL}" boxes count for nothing.')

# How cells are marked (docs/tasks.md): a box (today's default), or a dot at the centre, which never piles up.
_MARK_TAGS = {"rectangle": "RectangleLabels", "keypoint": "KeyPointLabels"}
_MARK_ATTRS = {"rectangle": 'strokeWidth="2" opacity="0.15"', "keypoint": 'strokeWidth="2"'}


def build_label_config(classes: Sequence[str], mark: Mark = "rectangle") -> str:
    """Return the Label Studio XML config for these cell classes, each cell marked by ``mark`` (see the module
    docstring).

    Raises :class:`LabelConfigError` for an empty list, duplicates, blank names, a reserved label name,
    or more than 9 classes (each class needs its own digit hotkey).
    """
    names = _check_classes(classes)
    labels = [_label_xml(n, _PALETTE[i % len(_PALETTE)], str(i + 1)) for i, n in enumerate(names)]
    labels.append(_label_xml(NOT_NUCLEUS_LABEL, _NOT_NUCLEUS_COLOUR, _NOT_NUCLEUS_HOTKEY))
    labels.append(_label_xml(NEUTRAL_LABEL, _NEUTRAL_COLOUR, _NEUTRAL_HOTKEY))
    return (
        "<View>\n"
        f'  <Header value={quoteattr(instructions(names))} size="5"/>\n'
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>\n'
        f'  <{_MARK_TAGS[mark]} name="{FROM_NAME}" toName="{TO_NAME}" {_MARK_ATTRS[mark]}>\n'
        + "".join(f"    {lab}\n" for lab in labels)
        + f"  </{_MARK_TAGS[mark]}>\n</View>\n"
    )


def parse_label_set(config_xml: str) -> LabelSet:
    """The :class:`LabelSet` of a config made by :func:`build_label_config`, this version or an older one."""
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
    values = [lab.get("value", "") for lab in block.findall("Label")]
    neutral = NEUTRAL_LABEL if NEUTRAL_LABEL in values or LEGACY_NEUTRAL_LABEL not in values else LEGACY_NEUTRAL_LABEL
    classes = tuple(v for v in values if v not in RESERVED_LABELS)
    return LabelSet(classes, NOT_NUCLEUS_LABEL in values, neutral)


def parse_classes(config_xml: str) -> list[str]:
    """The class names of a config made by :func:`build_label_config` (reserved labels excluded)."""
    return list(parse_label_set(config_xml).classes)


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c).strip() for c in classes]
    if not names:
        raise LabelConfigError("no cell classes given; pass at least one, e.g. --classes Tumor,Lymphocyte,Other")
    if any(not n for n in names):
        raise LabelConfigError(f"blank class name in {list(classes)!r}; remove empty entries")
    if len(set(names)) != len(names):
        raise LabelConfigError(f"duplicate class names in {names!r}; each class must be named once")
    reserved = [n for n in names if n.casefold() in {r.casefold() for r in RESERVED_LABELS}]
    if reserved:
        raise LabelConfigError(
            f"class name {reserved[0]!r} is reserved ({NOT_NUCLEUS_LABEL!r} is always offered, on hotkey 0, and "
            f"{NEUTRAL_LABEL!r} marks boxes nobody has classified); drop it or rename that class"
        )
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
