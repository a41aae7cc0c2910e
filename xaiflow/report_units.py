"""Physical units in the report: a metadata bin reads ``0.032–0.1 um/px``, not ``(0.0316, 0.1]``.

The shortcut check cuts a numeric sample coordinate (the pixel size ``um_per_px`` by default) into
bins labelled by pandas' interval text. :func:`bin_label` turns such a label into a range with the
coordinate's unit, and :func:`quantity` names the coordinate with its unit for axes and headings;
a coordinate without a known unit keeps its name, and its ranges are shown without a unit.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

#: sample coordinates with a physical meaning: (what it is, unit)
UNITS = {"um_per_px": ("pixel size", "um/px"), "source_um_per_px": ("pixel size of the source image", "um/px"),
         "magnification": ("magnification", "x")}

_INTERVAL = re.compile(r"^[(\[]\s*([-+0-9.eE]+|-?inf)\s*,\s*([-+0-9.eE]+|-?inf)\s*[)\]]$")


def quantity(by: str) -> str:
    """``by`` as an axis label: ``pixel size (um/px)``, or the coordinate's name when its unit is unknown."""
    what, unit = UNITS.get(by, (by, ""))
    return f"{what} ({unit})" if unit else what


def _range(low: float, high: float, by: str) -> str:
    unit = UNITS.get(by, ("", ""))[1]
    return f"{low:.3g}–{high:.3g}" + (f" {unit}" if unit else "")


def bin_label(text: Any, by: str, edges: list[float] | None = None) -> str:
    """A bin's interval text as ``low–high unit`` (3 significant digits), from the bin ``edges`` it was
    cut with when given (pandas widens the lowest edge of ``include_lowest`` cuts: ``(0.0499, 0.2]``
    is the bin 0.05–0.2); other text unchanged."""
    if edges is not None:
        for lowest in (False, True):
            cats = pd.cut([], bins=edges, include_lowest=lowest).categories
            named = {str(c): _range(edges[i], edges[i + 1], by) for i, c in enumerate(cats)}
            if str(text) in named:
                return named[str(text)]
    found = _INTERVAL.match(str(text).strip())
    return _range(*(float(v) for v in found.groups()), by) if found else str(text)


def with_bin_labels(rows: list[dict[str, Any]], by: str, edges: list[float] | None = None) -> list[dict[str, Any]]:
    """Copies of table ``rows`` whose ``bin`` is :func:`bin_label`'s text."""
    return [{**r, "bin": bin_label(r["bin"], by, edges)} if "bin" in r else dict(r) for r in rows]
