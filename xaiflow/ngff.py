"""OME-Zarr (NGFF 0.5) metadata of the image and mask groups, so napari and other NGFF readers open them.

An ``images/<dataset>`` group is an NGFF *image*: its ``image(sample, y, x)`` array is the one
(full-resolution) dataset of a single-level ``multiscales`` entry, kept in the group's attributes under
``ome``. The array's dimension names are the axes' names, as NGFF 0.5 asks. The mapping:

* ``sample`` is a custom axis (no ``type``: NGFF allows one non-space axis of a custom type before the
  space axes), so a viewer shows one micrograph per step of a slider;
* ``y`` and ``x`` are ``space`` axes; their ``scale`` is the pixel size in micrometres where every sample
  shares one known ``um_per_px``, else 1 with no unit (pixels): NGFF has one scale per array, and
  micrographs of different magnification cannot share it (their per-sample sizes stay in ``y_um``/``x_um``).

A ``masks/<dataset>`` group is the same plus ``image-label`` (an NGFF label image): its source is the
images group, and each mask value is listed with its class name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from xaiflow import schema

VERSION = "0.5"
#: the group attribute NGFF 0.5 keeps its metadata in
ATTR = "ome"
#: the NGFF name of the micrometre (a UDUNITS-2 name from the spec's list of space units)
MICROMETER = "micrometer"


def pixel_size(ds: xr.Dataset) -> float | None:
    """The pixel size in um every sample of ``ds`` shares, or None (unknown for some, or they differ)."""
    if schema.UM_PER_PX not in ds.variables:
        return None
    um = np.asarray(ds[schema.UM_PER_PX].values, np.float64)
    if not um.size or not np.all(np.isfinite(um) & (um > 0)) or not np.allclose(um, um[0], rtol=1e-6):
        return None
    return float(um[0])


def multiscales(ds: xr.Dataset, array: str, name: str) -> dict[str, Any]:
    """One NGFF ``multiscales`` entry whose single level is ``ds[array]`` (dims ``(sample, y, x)``)."""
    dims = ds[array].dims
    if dims != (schema.SAMPLE, schema.Y, schema.X):
        raise ValueError(f"{name}: NGFF metadata needs an array with dims (sample, y, x), {array} has {dims}")
    um = pixel_size(ds)
    space = {"type": "space", **({"unit": MICROMETER} if um is not None else {})}
    axes = [{"name": schema.SAMPLE}, {"name": schema.Y, **space}, {"name": schema.X, **space}]
    scale = [1.0, um or 1.0, um or 1.0]
    return {"name": name, "axes": axes,
            "datasets": [{"path": array, "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}


def image_attrs(ds: xr.Dataset, name: str) -> dict[str, Any]:
    """The ``ome`` attribute of an images group."""
    return {"version": VERSION, "multiscales": [multiscales(ds, schema.IMAGE, name)]}


def label_attrs(ds: xr.Dataset, name: str, image_group: str) -> dict[str, Any]:
    """The ``ome`` attribute of a masks group: a label image of ``image_group`` (a path from the workspace
    root), with the mask classes as label properties."""
    classes = [str(c) for c in ds.attrs.get(schema.ATTR_MASK_CLASSES, [])]
    source = "../" * len(name.strip("/").split("/")) + image_group.strip("/")
    label = {"source": {"image": source},
             **({"properties": [{"label-value": i, "class": c} for i, c in enumerate(classes)]} if classes else {})}
    return {"version": VERSION, "multiscales": [multiscales(ds, schema.MASK, name)], "image-label": label}
