"""Which mask classes make "the region" of an image, possibly depending on the image's class.

Expert segmentations label every pixel with a mask class (``matrix``, ``carbide_network``,
``spheroidite``, ...). A localization metric, a human-vs-model comparison or a shortcut test
needs one boolean region per image, and which classes form it may follow the image's label:
for a ``network`` micrograph the evidence is the ``carbide_network`` class, for a
``spheroidite`` micrograph the ``spheroidite`` particles. A :class:`MaskSelection` says
that, and :func:`parse_mask_selection` reads it from a config value or a CLI string::

    None                                     every class but the first (label 0, the background)
    "carbide_network"                        one class, for every image
    ["carbide", "network"] / "carbide+network"   the union of classes, for every image
    {"network": "carbide_network", "spheroidite": ["particles"], "*": "particles"}
    "network=carbide_network,spheroidite=particles,*=particles"   (the CLI form)

In the per-label forms ``*`` is the default for labels not listed; without it an unlisted
label has no region (its images are skipped, NaN). A label mapped to nothing
(``{"pearlite": []}``, CLI ``pearlite=``) has no region either.

Images without a mask (a subset annotated) are marked by the masks group's boolean
coordinate ``has_mask(sample)`` (:data:`xaiflow.schema.HAS_MASK`, read by :func:`has_mask`);
pass it to :meth:`MaskSelection.regions` and their regions are empty, so every metric of
them is NaN, never a score of 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from xaiflow import schema
from xaiflow.errors import XaiflowError

#: the key of the default entry in the per-label forms
ANY_LABEL = "*"


class MaskSpecError(XaiflowError):
    """A mask selection names unknown mask classes or labels, or is malformed."""


@dataclass(frozen=True)
class MaskSelection:
    """Mask classes per image label: ``default`` for labels not listed in ``by_label``."""

    default: tuple[str, ...]  # mask class names; () = no region for unlisted labels
    by_label: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # image label -> mask class names

    def classes_for(self, label: str) -> tuple[str, ...]:
        """The mask class names that form the region of an image of class ``label``."""
        return tuple(self.by_label.get(str(label), self.default))

    def values(self, mask_classes: list[str]) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
        """(default label values, label -> label values): class names as the mask's pixel values."""
        index = {str(c): i for i, c in enumerate(mask_classes)}
        unknown = sorted({c for cs in (self.default, *self.by_label.values()) for c in cs} - set(index))
        if unknown:
            raise MaskSpecError(f"unknown mask class(es) {unknown}; valid: {list(map(str, mask_classes))}")
        return (tuple(index[c] for c in self.default),
                {lab: tuple(index[c] for c in cs) for lab, cs in self.by_label.items()})

    def region(self, mask: np.ndarray, label: str, mask_classes: list[str]) -> np.ndarray:
        """(y, x) bool: pixels of ``mask`` whose class is selected for an image of class ``label``."""
        return self.regions(np.asarray(mask)[None], [label], mask_classes)[0]

    def regions(self, masks: np.ndarray, labels: Sequence[str], mask_classes: list[str],
                has_mask: np.ndarray | None = None) -> np.ndarray:
        """(n, y, x) bool, vectorized over a batch; images with ``has_mask`` False get an empty region."""
        masks = np.asarray(masks)
        if len(labels) != len(masks):
            raise MaskSpecError(f"{len(masks)} masks but {len(labels)} labels")
        if masks.dtype.kind not in "ui" or (masks.size and masks.min() < 0):
            raise MaskSpecError(f"masks must hold non-negative integer class indices, got dtype {masks.dtype}")
        default, by_label = self.values(mask_classes)
        names, inverse = np.unique(np.asarray([str(x) for x in labels], dtype=object), return_inverse=True)
        size = max(len(mask_classes), int(masks.max()) + 1 if masks.size else 0)
        lut = np.zeros((len(names), size), bool)  # (label, pixel value) -> selected
        for i, name in enumerate(names):
            lut[i, list(by_label.get(name, default))] = True
        if has_mask is not None:
            lut = np.concatenate([lut, np.zeros((1, size), bool)])
            inverse = np.where(np.asarray(has_mask, bool), inverse, len(names))
        return lut[inverse.reshape(-1, *([1] * (masks.ndim - 1))), masks]

    def area(self, masks: np.ndarray, labels: Sequence[str], mask_classes: list[str],
             has_mask: np.ndarray | None = None) -> np.ndarray:
        """(n,) float64: the selected region's share of each image, the chance level of a localization
        metric (a map that knows nothing hits the region that often); NaN where the image has no mask."""
        regions = self.regions(masks, labels, mask_classes, has_mask)
        share = regions.reshape(len(regions), -1).mean(axis=1) if regions.size else np.zeros(len(regions))
        return share if has_mask is None else np.where(np.asarray(has_mask, bool), share, np.nan)

    def describe(self) -> str:
        """e.g. ``network -> carbide_network; others -> particles``."""
        def names(cs: tuple[str, ...]) -> str:
            return "+".join(cs) if cs else "(none)"

        parts = [f"{lab} -> {names(cs)}" for lab, cs in self.by_label.items()]
        if not parts:
            return names(self.default)
        return "; ".join([*parts, f"others -> {names(self.default)}"])

    def identity(self) -> dict[str, Any]:
        """A JSON-able record of the selection (stored in attrs, compared on reruns)."""
        return {"default": list(self.default), "by_label": {k: list(v) for k, v in sorted(self.by_label.items())}}

    def all_classes(self) -> tuple[str, ...]:
        """Every mask class named anywhere in the selection, in first-seen order."""
        return tuple(dict.fromkeys(c for cs in (*self.by_label.values(), self.default) for c in cs))


def _class_list(value: Any, where: str) -> tuple[str, ...]:
    """``"a"``, ``"a+b"``, ``["a", "b"]`` -> ("a", "b"); ``""``/``[]`` -> ()."""
    if isinstance(value, str):
        items = [v.strip() for v in value.replace(",", "+").split("+")]
        if value.strip() and not all(items):
            raise MaskSpecError(f"{where}: empty mask class name in {value!r}")
        return tuple(i for i in items if i)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(v.strip() for v in value))
    raise MaskSpecError(f"{where}: expected a mask class name or a list of them, got {value!r}")


def _parse_cli_mapping(value: str) -> dict[str, str]:
    """``"network=carbide_network,spheroidite=particles+x,*=particles"`` -> a mapping."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise MaskSpecError(f"mask selection {value!r}: {part!r} is not LABEL=CLASS[+CLASS...] "
                                "(mix of per-label and plain entries)")
        label, _, classes = (s.strip() for s in part.partition("="))
        if not label:
            raise MaskSpecError(f"mask selection {value!r}: {part!r} has no label before '='")
        if label in out:
            raise MaskSpecError(f"mask selection {value!r}: label {label!r} given twice")
        out[label] = classes
    return out


def parse_mask_selection(value: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None,
                         mask_classes: list[str], labels: Sequence[str] | None = None) -> MaskSelection:
    """A :class:`MaskSelection` from a config/CLI value (forms: see the module docstring).

    ``mask_classes``: the masks group's class names (pixel value = index); ``labels``: the image
    classes, to refuse unknown labels (not checked when None). Unknown mask classes or labels
    are errors naming them and the valid ones.
    """
    classes = [str(c) for c in mask_classes]
    if isinstance(value, MaskSelection):
        selection = value
    elif value is None:
        if len(classes) < 2:
            raise MaskSpecError(f"the masks have only the class(es) {classes}: name the mask class(es) that form "
                                "the region")
        selection = MaskSelection(tuple(classes[1:]), {})
    elif isinstance(value, str) and "=" in value:
        return parse_mask_selection(_parse_cli_mapping(value), classes, labels)
    elif isinstance(value, Mapping):
        by_label: dict[str, tuple[str, ...]] = {}
        default: tuple[str, ...] = ()
        for label, cs in value.items():
            parsed = _class_list(cs, f"mask selection for label {label!r}")
            if str(label) == ANY_LABEL:
                default = parsed
            else:
                by_label[str(label)] = parsed
        if not by_label and not default:
            raise MaskSpecError(f"mask selection {dict(value)!r} selects no mask class for any label")
        selection = MaskSelection(default, by_label)
    else:
        chosen = _class_list(value, "mask selection")
        if not chosen:
            raise MaskSpecError(f"mask selection {value!r} names no mask class; valid: {classes}")
        selection = MaskSelection(chosen, {})
    selection.values(classes)  # refuses unknown classes
    if labels is not None:
        known = sorted({str(x) for x in labels})
        unknown = sorted(set(selection.by_label) - set(known))
        if unknown:
            raise MaskSpecError(f"mask selection names unknown image label(s) {unknown}; labels: {known}")
    return selection


def has_mask(masks: xr.Dataset) -> np.ndarray:
    """(sample,) bool: which samples of a ``masks/<dataset>`` group carry an annotation
    (all of them in groups written before masks could cover a subset)."""
    if schema.HAS_MASK in masks.variables:
        return np.asarray(masks[schema.HAS_MASK].values, bool)
    return np.ones(masks.sizes[schema.SAMPLE], bool)
