"""Expert annotations: what class a person assigns to a micrograph and which regions decided it.

One labelled group per dataset, ``annotations/<dataset>``, readable with plain
``xr.open_zarr(ws, group="annotations/<dataset>")`` (stored as :func:`xaiflow.store.for_disk` says):

- dims ``sample`` (every sample of ``images/<dataset>``, same order, with the images' per-sample
  coordinates: sample_id, label, split, group, ...), ``annotator`` (grows as annotators appear),
  ``y``, ``x``;
- ``region(sample, annotator, y, x)`` uint8, 1 where the annotator painted "this decided it";
- ``annotated_class``, ``confidence`` (in [0, 1]), ``seconds`` (time spent), ``annotated_at``
  (ISO 8601 UTC) per (sample, annotator): '' or NaN where nobody annotated;
- ``done(sample, annotator)``: set last for a submission, so a crash mid-write leaves it not done.

Cells are found by sample id in the group's own ``sample_id`` coordinate (``sample`` in groups written
before it), never by position in the images. The group belongs to the images it was made for: when
``images/<dataset>`` no longer holds the same samples (ids), image size or ingest config (``ingest
--overwrite`` with other data), writing and resuming are refused with :class:`StaleAnnotationsError`,
which says how to go on; nothing stored is touched.

Every per-(sample, annotator) value is its own Zarr chunk, so one submission writes its own
chunks only: submissions of different cells (two experts at once, two browser tabs) never
touch one chunk. A submission first clears its cell's ``done`` flag, writes the values, then
sets the flag: re-annotating replaces the earlier submission, and a submission cut short is
not counted. Adding an annotator resizes the ``annotator`` dimension under the group lock
(:mod:`xaiflow.locks`); the coordinate is extended last, so readers never see an annotator
whose arrays do not exist yet, and :func:`open_annotations` trims the arrays to the coordinate (a
reader in the middle of an addition sees the annotators before it).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

import xaiflow
from xaiflow import schema, store
from xaiflow.errors import XaiflowError
from xaiflow.locks import WorkspaceBusyError, group_lock

ANNOTATIONS = "annotations"  # group kind
ANNOTATOR = "annotator"  # dimension
REGION = "region"
ANNOTATED_CLASS = "annotated_class"
CONFIDENCE = "confidence"
SECONDS = "seconds"
ANNOTATED_AT = "annotated_at"
#: per-cell variables besides the region, in the order a submission writes them (``done`` last)
CELL_VARIABLES = (ANNOTATED_CLASS, CONFIDENCE, SECONDS, ANNOTATED_AT)

ANNOTATOR_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: how long a writer waits for another one adding an annotator (a lock held for milliseconds)
LOCK_WAIT_SECONDS = 10.0


class AnnotationError(XaiflowError):
    """An annotation is refused or missing; the message names the dataset, sample, annotator or value."""


class StaleAnnotationsError(AnnotationError):
    """``annotations/<dataset>`` was made for other images than ``images/<dataset>`` holds now."""


def annotation_group(dataset: str) -> str:
    """``annotations/<dataset>``."""
    try:
        return schema.group_path(ANNOTATIONS, dataset)
    except ValueError as exc:
        raise AnnotationError(str(exc)) from None


def write_annotation(workspace: str | os.PathLike[str], dataset: str, sample: str, annotator: str, *, label: str,
                     confidence: float, region: np.ndarray, seconds: float) -> None:
    """Store one submission atomically (region, class, confidence, seconds, time, then done).

    Creates the group on first use. ``region`` is (y, x) bool/uint8 (values 0/1) of the image shape.
    A second submission of the same (sample, annotator) replaces the first. The cell is the one of
    ``sample`` in the group's own ``sample`` coordinate; a group made for other images is refused
    (:func:`check_current`) before anything is written."""
    workspace = str(workspace)
    images = _images(workspace, dataset)
    _check_annotator(annotator)
    classes = [str(c) for c in images.attrs[schema.ATTR_CLASSES]]
    ids = store.strings(images[schema.SAMPLE].values)
    if not (ids == str(sample)).any():
        raise AnnotationError(f"annotations/{dataset}: unknown sample id {sample!r} (not in images/{dataset}, "
                              f"e.g. {', '.join(ids[:3].tolist())})")
    if label not in classes:
        raise AnnotationError(f"annotations/{dataset}: class {label!r} is not one of the dataset's classes {classes}")
    confidence, seconds = _number("confidence", confidence), _number("seconds", seconds)
    if not 0.0 <= confidence <= 1.0:
        raise AnnotationError(f"annotations/{dataset}: confidence {confidence} is outside [0, 1]")
    if seconds < 0:
        raise AnnotationError(f"annotations/{dataset}: seconds {seconds} is negative")
    mask = _region(region, (images.sizes[schema.Y], images.sizes[schema.X]), dataset)
    check_current(workspace, dataset, images)

    group = annotation_group(dataset)
    column = _annotator_index(workspace, dataset, images, annotator)
    root = zarr.open_group(store.location(workspace), path=group, mode="r+", zarr_format=3)
    i = int(np.flatnonzero(store.sample_ids(root) == str(sample))[0])  # by id, never by position
    root[schema.DONE][i, column] = False  # an earlier submission stops counting until this one is stored
    root[REGION][i, column] = mask
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    values = {ANNOTATED_CLASS: label, CONFIDENCE: confidence, SECONDS: seconds, ANNOTATED_AT: now}
    for name in CELL_VARIABLES:
        root[name][i, column] = values[name]
    root[schema.DONE][i, column] = True


def check_current(workspace: str | os.PathLike[str], dataset: str, images: xr.Dataset | None = None) -> None:
    """Refuse (:class:`StaleAnnotationsError`) an ``annotations/<dataset>`` made for other images than
    ``images/<dataset>`` holds now: other sample ids (in any order: cells are found by id), another
    image size, or another ingest config (when the group recorded the images' config hash at its
    creation). Without a (complete) group there is nothing to check. The message says how to go on;
    nothing is changed."""
    workspace = str(workspace)
    group = annotation_group(dataset)
    if not _complete(workspace, group):
        return
    images = _images(workspace, dataset) if images is None else images
    root = zarr.open_group(store.location(workspace), path=group, mode="r", zarr_format=3)
    stored = store.sample_ids(root)
    current = store.strings(images[schema.SAMPLE].values)
    reasons = []
    gone, new = np.setdiff1d(stored, current), np.setdiff1d(current, stored)
    if len(gone):
        reasons.append(f"{len(gone)} annotated sample id(s) no longer in the images, e.g. {', '.join(gone[:3])}")
    if len(new):
        reasons.append(f"{len(new)} image(s) not in the annotations, e.g. {', '.join(new[:3])}")
    shape, image_shape = tuple(root[REGION].shape[2:]), (images.sizes[schema.Y], images.sizes[schema.X])
    if shape != image_shape:
        reasons.append(f"the annotations are {shape[0]}x{shape[1]} px, the images {image_shape[0]}x{image_shape[1]}")
    made_for = dict(root.attrs.get(schema.ATTR_PROVENANCE, {})).get("images_config_hash")
    now = dict(images.attrs.get(schema.ATTR_PROVENANCE, {})).get("config_hash")
    if made_for and now and made_for != now:
        reasons.append(f"the images were ingested again with another config (hash {now[:12]}, the annotations "
                       f"were made for {made_for[:12]})")
    if reasons:
        raise StaleAnnotationsError(
            f"{workspace}: {group} was made for other images than images/{dataset} holds now ({'; '.join(reasons)}), "
            f"e.g. after `xaiflow ingest --overwrite`. Nothing was written. To go on with these annotations, "
            f"ingest the same samples again (same config); to annotate the new images, move the folder "
            f"{workspace}/{group} out of the workspace (keeps the old annotations) or delete it.")


def annotated_samples(workspace: str | os.PathLike[str], dataset: str, annotator: str) -> set[str]:
    """Sample ids this annotator has submitted (done), for resuming a session; empty for a new one."""
    _check_annotator(annotator)
    group = annotation_group(dataset)
    if not store.group_exists(workspace, group):
        _images(str(workspace), dataset)  # an unknown dataset is an error, not "nothing annotated"
        return set()
    check_current(workspace, dataset)  # a session on re-ingested images must not resume old answers
    root = zarr.open_group(store.location(workspace), path=group, mode="r", zarr_format=3)
    names = store.strings(root[ANNOTATOR][:]).tolist()
    if annotator not in names:
        return set()
    done = np.asarray(root[schema.DONE][:, names.index(annotator)], bool)
    return set(store.sample_ids(root)[done].tolist())


def open_annotations(workspace: str | os.PathLike[str], dataset: str) -> xr.Dataset:
    """The group as an xarray Dataset: the per-cell values loaded, ``region`` lazy (dask).

    The per-cell arrays are cut to the ``annotator`` coordinate: while an annotator is being added
    (:func:`_annotator_index`) the arrays already have one column more than the coordinate, and a
    reader then sees the annotators before it. Opens what is stored even when the images were
    ingested again since (:func:`check_current` says whether they still match).
    Raises :class:`AnnotationError` when the dataset has no annotations yet."""
    group = annotation_group(dataset)
    if not store.group_exists(workspace, group):
        raise AnnotationError(f"{workspace}: no annotations for dataset {dataset!r} yet ({group} does not exist); "
                              f"make some with `xaiflow annotate -w {workspace} -d {dataset} --annotator NAME`")
    location = store.location(workspace)
    per_cell = (REGION, *CELL_VARIABLES, schema.DONE)
    # the coordinates (small: loaded), without the per-cell arrays, whose annotator size may run ahead
    ds = xr.open_zarr(location, group=group, consolidated=False, zarr_format=3, chunks=None,
                      drop_variables=list(per_cell)).load()
    ds = ds.set_coords(list(ds.data_vars))  # all that is left are the sample and annotator coordinates
    root = zarr.open_group(location, path=group, mode="r", zarr_format=3)
    n = ds.sizes[ANNOTATOR]

    def variable(name: str, data: Any) -> tuple[tuple[str, ...], Any, dict[str, Any]]:
        attrs = {k: v for k, v in root[name].attrs.items() if not k.startswith("_") and k != "coordinates"}
        return tuple(root[name].metadata.dimension_names), data, attrs

    # one zarr read per variable (concurrent chunk fetches) instead of a Dask task per cell
    cells = {name: variable(name, np.asarray(root[name][:, :n])) for name in (*CELL_VARIABLES, schema.DONE)}
    region = variable(REGION, da.from_zarr(root[REGION])[:, :n])
    return store.from_disk(ds.assign({REGION: region, **cells}))


def _images(workspace: str, dataset: str) -> xr.Dataset:
    group = schema.group_path(schema.IMAGES, dataset) if dataset and "/" not in dataset else None
    if group is None or not store.group_exists(workspace, group):
        known = [g.split("/", 1)[1] for g in store.list_groups(workspace) if g.startswith(f"{schema.IMAGES}/")] \
            if store.is_workspace(workspace) else []
        raise AnnotationError(f"{workspace}: unknown dataset {dataset!r} (datasets: {', '.join(known) or 'none'})")
    return store.open_group(workspace, group)


def _check_annotator(annotator: str) -> None:
    if not isinstance(annotator, str) or not ANNOTATOR_ID.match(annotator):
        raise AnnotationError(f"annotator id {annotator!r} is not valid: use 1-64 letters, digits, '_', '.' or '-'")


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise AnnotationError(f"{name} {value!r} is not a finite number")
    return number


def _region(region: Any, shape: tuple[int, int], dataset: str) -> np.ndarray:
    """The painted region as uint8 0/1 of the image shape, or an error naming what is wrong."""
    arr = np.asarray(region)
    if arr.shape != shape:
        raise AnnotationError(f"annotations/{dataset}: region has shape {arr.shape}, expected the images' {shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise AnnotationError(f"annotations/{dataset}: region has dtype {arr.dtype}, expected bool or uint8 0/1")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise AnnotationError(f"annotations/{dataset}: region values must be 0 or 1 (found {arr.min()}..{arr.max()})")
    return arr.astype(np.uint8)


@contextmanager
def _waiting_lock(workspace: str, group: str, what: str) -> Iterator[None]:
    """The group lock, waiting a little for another writer: adding an annotator holds it for milliseconds."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            with group_lock(workspace, group, what):
                yield
            return
        except WorkspaceBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _annotator_index(workspace: str, dataset: str, images: xr.Dataset, annotator: str) -> int:
    """The column of ``annotator``, creating the group or adding the annotator (under the lock) when needed."""
    group = annotation_group(dataset)
    found = _column(workspace, group, annotator)
    if found is not None:
        return found
    with _waiting_lock(workspace, group, f"adding annotator {annotator}"):
        if not _complete(workspace, group):  # none yet, or its creation was cut short: nothing submitted
            store.delete_group(workspace, group)
            _create(workspace, group, images, annotator)
            return 0
        found = _column(workspace, group, annotator)  # another writer may have added it meanwhile
        if found is not None:
            return found
        root = zarr.open_group(store.location(workspace), path=group, mode="r+", zarr_format=3)
        n = root[ANNOTATOR].shape[0]
        for name, arr in root.arrays():
            dims = arr.metadata.dimension_names or ()
            if name != ANNOTATOR and ANNOTATOR in dims and arr.shape[dims.index(ANNOTATOR)] != n + 1:
                shape = list(arr.shape)
                shape[dims.index(ANNOTATOR)] = n + 1
                arr.resize(tuple(shape))
        coord = root[ANNOTATOR]
        coord.resize((n + 1,))
        coord[n] = annotator
        store.consolidate(workspace)  # plain readers see the new size from now on
        return n


def _complete(workspace: str, group: str) -> bool:
    return (store.group_exists(workspace, group)
            and store.group_attrs(workspace, group).get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE)


def _column(workspace: str, group: str, annotator: str) -> int | None:
    if not _complete(workspace, group):
        return None
    names = store.strings(zarr.open_array(store.location(workspace), path=f"{group}/{ANNOTATOR}", mode="r",
                                          zarr_format=3)[:]).tolist()
    return names.index(annotator) if annotator in names else None


def _create(workspace: str, group: str, images: xr.Dataset, annotator: str) -> None:
    """Lay out the group with one annotator (no values, nothing done), then mark it complete: from then on
    every cell stands alone, flagged by ``done``."""
    n, h, w = images.sizes[schema.SAMPLE], images.sizes[schema.Y], images.sizes[schema.X]
    cell = (schema.SAMPLE, ANNOTATOR)
    strings = np.dtypes.StringDType()
    ds = xr.Dataset(
        {REGION: ((*cell, schema.Y, schema.X), da.zeros((n, 1, h, w), dtype=np.uint8, chunks=(1, 1, h, w))),
         ANNOTATED_CLASS: (cell, np.full((n, 1), "", strings)),
         CONFIDENCE: (cell, np.full((n, 1), np.nan, np.float32)),
         SECONDS: (cell, np.full((n, 1), np.nan, np.float32)),
         ANNOTATED_AT: (cell, np.full((n, 1), "", strings)),
         schema.DONE: (cell, np.zeros((n, 1), bool))},
        coords={**{k: (schema.SAMPLE, np.asarray(v.values), v.attrs) for k, v in images.coords.items()
                   if v.dims == (schema.SAMPLE,)},
                ANNOTATOR: np.array([annotator], strings)},
        attrs={schema.ATTR_CLASSES: [str(c) for c in images.attrs[schema.ATTR_CLASSES]],
               schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
               schema.ATTR_STATUS: schema.STATUS_INCOMPLETE,
               schema.ATTR_PROVENANCE: {"images": schema.group_path(schema.IMAGES, group.split("/", 1)[1]),
                                        "images_config_hash": images.attrs.get(schema.ATTR_PROVENANCE, {})
                                        .get("config_hash", ""),
                                        "xaiflow_version": xaiflow.__version__,
                                        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}},
    )
    ds[REGION].attrs.update(long_name="region the annotator painted as deciding the class", units="1")
    ds[ANNOTATED_CLASS].attrs.update(long_name="class the annotator assigned ('' = not annotated)")
    ds[CONFIDENCE].attrs.update(long_name="annotator's confidence in the class", units="1")
    ds[SECONDS].attrs.update(long_name="time spent on the image", units="s")
    ds[ANNOTATED_AT].attrs.update(long_name="submission time, ISO 8601 UTC")
    ds[schema.DONE].attrs.update(long_name="submission stored completely")
    encoding = {name: {"chunks": (1, 1)} for name in (*CELL_VARIABLES, schema.DONE)}
    encoding[ANNOTATOR] = {"chunks": (1,)}  # grows one entry at a time
    store.write_group(workspace, group, ds, compute=False, encoding=encoding)
    store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
