"""Source -> fixed-shape samples -> chunked Zarr: the ``images/<dataset>`` (and ``masks/``) groups.

Ingestion runs in three steps, each safe to interrupt:

1. **list** the source (cheap, on the client): CSV rows, files, labels, ids;
2. **scan** every sample as Dask tasks (decode, plan the window, check the mask), so that
   every bad item is reported at once, *before anything is written*: with
   ``on_error: raise`` nothing is written at all; with ``on_error: skip`` bad items are
   left out and recorded in the ``skipped`` attribute;
3. **write** one Dask task per chunk of ``chunk_size`` samples into a template created up
   front, each task writing its own chunk-aligned region and flag. The group is marked
   ``complete`` only at the end, so a failed ingest never looks complete, and re-running
   the same config resumes the missing chunks. A finished ingest with the same config is a
   no-op; a different config for an existing dataset is refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

import xaiflow
from xaiflow import schema, store
from xaiflow.config import DatasetConfig, RunConfig
from xaiflow.geometry import convert_dtype, plan_window, resample
from xaiflow.runtime import ProgressFn, map_tasks
from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceError, Window
from xaiflow.splits import assign_splits

log = logging.getLogger("xaiflow")


class IngestError(ValueError):
    """Ingestion refused or failed; the message lists the items (file, row, reason)."""


@dataclass
class IngestResult:
    dataset: str
    status: str  # "written", "resumed", "up-to-date"
    n_samples: int
    n_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def make_source(cfg: DatasetConfig) -> ImageSource:
    return SOURCES.get(cfg.source.kind)(cfg.source)


# ---------------------------------------------------------------- scan (tasks)

def _name(ref: SampleRef) -> str:
    return f"{ref.origin}: {ref.uri}" if ref.origin and ref.origin != ref.uri else ref.uri


def scan_batch(refs: list[SampleRef], source: ImageSource, cfg: DatasetConfig) -> list[Window | str]:
    """Per sample: the window to cut (relative to ``source.read``), or the error message."""
    out: list[Window | str] = []
    for ref in refs:
        if ref.problem:
            out.append(f"{ref.origin}: {ref.problem}")
            continue
        try:
            img = source.read(ref)
            win = plan_window(img.shape[0], img.shape[1], ref.um_per_px, cfg.geometry, _name(ref))
            mask = source.read_mask(ref)
            if mask is not None and mask.shape != img.shape:
                raise SourceError(f"{_name(ref)}: mask shape {mask.shape} differs from the image's {img.shape}")
            out.append(win)
        except SourceError as e:
            msg = str(e)
            out.append(msg if ref.origin in msg else f"{ref.origin}: {msg}")
    return out


# ---------------------------------------------------------------- write (tasks)

def write_chunk(task: tuple[int, list[SampleRef], list[Window]], source: ImageSource, cfg: DatasetConfig,
                workspace: str, with_masks: bool) -> int:
    """Read, cut, resample and write one chunk of samples; flag it done. Returns the chunk index."""
    index, refs, windows = task
    size = cfg.geometry.size
    images = np.empty((len(refs), *size), dtype=cfg.dtype)
    masks = np.empty((len(refs), *size), dtype=np.uint8) if with_masks else None
    for j, (ref, win) in enumerate(zip(refs, windows)):
        images[j] = convert_dtype(resample(source.read(ref), win, size), cfg.dtype)
        if masks is not None:
            masks[j] = resample(source.read_mask(ref), win, size, nearest=True)
    start = index * cfg.chunk_size
    images_group = schema.group_path(schema.IMAGES, cfg.name)
    store.write_region(workspace, images_group, schema.IMAGE, start, images)
    if masks is not None:
        masks_group = schema.group_path(schema.MASKS, cfg.name)
        store.write_region(workspace, masks_group, schema.MASK, start, masks)
        store.mark_chunk_done(workspace, masks_group, index)
    store.mark_chunk_done(workspace, images_group, index)
    return index


# ---------------------------------------------------------------- orchestration (client)

def _check_ids(refs: list[SampleRef]) -> None:
    seen: dict[str, SampleRef] = {}
    for r in refs:
        if r.id in seen:
            raise IngestError(f"duplicate sample id {r.id!r}: {_name(seen[r.id])} and {_name(r)}")
        seen[r.id] = r


def _metadata_coords(refs: list[SampleRef]) -> dict[str, tuple[str, np.ndarray]]:
    """Metadata columns as coords: numbers -> float64 (NaN for missing), else strings ('' missing)."""
    keys = list(dict.fromkeys(k for r in refs for k in r.metadata))
    reserved = set(schema.SAMPLE_COORDS) | {schema.SAMPLE, "source_um_per_px"}
    coords = {}
    for k in keys:
        if k in reserved:
            raise IngestError(f"metadata column {k!r} clashes with a reserved coordinate name; rename it")
        values = [r.metadata.get(k) for r in refs]
        numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        if numeric:
            arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            arr = np.array(["" if v is None else str(v) for v in values], dtype=object)
        coords[k] = (schema.SAMPLE, arr)
    return coords


def _classes(cfg: DatasetConfig, refs: list[SampleRef]) -> list[str]:
    declared = getattr(cfg.source, "classes", None)
    return list(declared) if declared else sorted({r.label for r in refs})


def build_template(cfg: DatasetConfig, source: ImageSource, refs: list[SampleRef], windows: list[Window],
                   skipped: list[dict[str, str]]) -> xr.Dataset:
    """The images dataset with all coordinates and a lazy (unwritten) image variable."""
    n, (h, w) = len(refs), cfg.geometry.size
    classes = _classes(cfg, refs)
    cidx = {c: i for i, c in enumerate(classes)}
    labels = [r.label for r in refs]
    groups = [r.group for r in refs]
    splits = assign_splits(groups, labels, cfg.split.fractions, cfg.split.seed)
    off = [(r.window.y0, r.window.x0) if r.window else (0, 0) for r in refs]
    src_um = np.array([r.um_per_px for r in refs], np.float64)
    sample_um = src_um * np.array([win.h / h for win in windows])
    coords: dict[str, Any] = {
        schema.SAMPLE: np.array([r.id for r in refs], dtype=object),
        schema.LABEL: (schema.SAMPLE, np.array(labels, dtype=object)),
        schema.LABEL_INDEX: (schema.SAMPLE, np.array([cidx[lab] for lab in labels], np.int16)),
        schema.GROUP: (schema.SAMPLE, np.array(groups, dtype=object)),
        schema.SOURCE: (schema.SAMPLE, np.array([r.uri for r in refs], dtype=object)),
        schema.SPLIT: (schema.SAMPLE, np.array(splits, dtype=object)),
        schema.UM_PER_PX: (schema.SAMPLE, sample_um),
        "source_um_per_px": (schema.SAMPLE, src_um),
        schema.TILE_Y0: (schema.SAMPLE, np.array([o[0] + win.y0 for o, win in zip(off, windows)], np.int64)),
        schema.TILE_X0: (schema.SAMPLE, np.array([o[1] + win.x0 for o, win in zip(off, windows)], np.int64)),
        schema.TILE_H: (schema.SAMPLE, np.array([win.h for win in windows], np.int64)),
        schema.TILE_W: (schema.SAMPLE, np.array([win.w for win in windows], np.int64)),
        **_metadata_coords(refs),
    }
    image = da.zeros((n, h, w), dtype=cfg.dtype, chunks=(cfg.chunk_size, h, w))
    ds = xr.Dataset({schema.IMAGE: ((schema.SAMPLE, schema.Y, schema.X), image)}, coords=coords)
    ds.attrs.update({
        schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
        schema.ATTR_CLASSES: classes,
        schema.ATTR_SKIPPED: skipped,
        schema.ATTR_PROVENANCE: {
            "source": source.describe(),
            "config_hash": cfg.config_hash(),
            "config": cfg.model_dump(mode="json"),
            "xaiflow_version": xaiflow.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    })
    return ds


def _mask_template(images: xr.Dataset, mask_classes: list[str]) -> xr.Dataset:
    keep = [schema.SAMPLE, schema.LABEL, schema.GROUP, schema.SPLIT]
    mask = da.zeros(images[schema.IMAGE].shape, dtype=np.uint8, chunks=images[schema.IMAGE].data.chunks)
    ds = xr.Dataset({schema.MASK: ((schema.SAMPLE, schema.Y, schema.X), mask)},
                    coords={k: images[k] for k in keep})
    ds.attrs.update({schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_MASK_CLASSES: mask_classes,
                     schema.ATTR_PROVENANCE: images.attrs[schema.ATTR_PROVENANCE]})
    return ds


def _existing_state(workspace: str, cfg: DatasetConfig, overwrite: bool) -> str:
    """'absent', 'replace' (overwrite), 'complete' or 'incomplete' (same config); refuses other configs."""
    group = schema.group_path(schema.IMAGES, cfg.name)
    if not store.group_exists(workspace, group):
        return "absent"
    attrs = store.group_attrs(workspace, group)
    old_hash = attrs.get(schema.ATTR_PROVENANCE, {}).get("config_hash")
    if overwrite:
        return "replace"  # deleted only once the new data has been scanned without error
    if old_hash != cfg.config_hash():
        raise IngestError(
            f"{workspace}: dataset {cfg.name!r} already exists with a different config "
            f"(config hash {str(old_hash)[:12]} != {cfg.config_hash()[:12]}); "
            "pass --overwrite (overwrite=True) to replace it, or use another dataset name"
        )
    return "complete" if attrs.get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE else "incomplete"


def _format_errors(cfg: DatasetConfig, errors: list[str], limit: int = 20) -> str:
    lines = [f"dataset {cfg.name!r}: {len(errors)} bad item(s) (set on_error: skip to ingest the rest):"]
    lines += [f"  - {e}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    return "\n".join(lines)


def ingest_dataset(cfg: DatasetConfig, workspace: str | os.PathLike[str], *, overwrite: bool = False,
                   client: Any = None, progress: ProgressFn | None = None) -> IngestResult:
    """Ingest one dataset into the workspace (see the module docstring for the guarantees)."""
    workspace = str(workspace)
    state = _existing_state(workspace, cfg, overwrite)
    images_group = schema.group_path(schema.IMAGES, cfg.name)
    if state == "complete":
        ds = store.open_group(workspace, images_group)
        log.info("dataset %s is up to date (%d samples); nothing to do", cfg.name, ds.sizes[schema.SAMPLE])
        return IngestResult(cfg.name, "up-to-date", ds.sizes[schema.SAMPLE],
                            n_skipped=len(ds.attrs.get(schema.ATTR_SKIPPED, [])))

    source = make_source(cfg)
    try:
        refs = source.list_samples()
    except SourceError as e:
        raise IngestError(f"dataset {cfg.name!r}: {e}") from None
    if not refs:
        raise IngestError(f"dataset {cfg.name!r}: the source lists no samples ({source.describe()})")
    _check_ids(refs)

    batches = [refs[i:i + cfg.chunk_size] for i in range(0, len(refs), cfg.chunk_size)]
    scanned = [w for batch in map_tasks(scan_batch, batches, client=client, progress=progress, stage="scan",
                                        source=source, cfg=cfg) for w in batch]
    errors = [w for w in scanned if isinstance(w, str)]
    skipped: list[dict[str, str]] = []
    if errors and cfg.on_error == "raise":
        raise IngestError(_format_errors(cfg, errors))
    kept = [(r, w) for r, w in zip(refs, scanned) if isinstance(w, Window)]
    for r, w in zip(refs, scanned):
        if isinstance(w, str):
            skipped.append({"id": r.id, "file": r.uri, "reason": w})
            log.warning("skipped %s: %s", r.id, w)
    if not kept:
        raise IngestError(_format_errors(cfg, errors) + "\nno sample is left to ingest")
    refs, windows = [r for r, _ in kept], [w for _, w in kept]

    template = build_template(cfg, source, refs, windows, skipped)
    n_chunks = math.ceil(len(refs) / cfg.chunk_size)
    with_masks = source.mask_classes is not None
    masks_group = schema.group_path(schema.MASKS, cfg.name)
    done = np.zeros(n_chunks, bool)
    if state == "incomplete":
        old = store.open_group(workspace, images_group, check_complete=False)
        if list(old[schema.SAMPLE].values) == list(template[schema.SAMPLE].values):
            done = store.chunks_done(workspace, images_group)
            if with_masks and store.group_exists(workspace, masks_group):
                done &= store.chunks_done(workspace, masks_group)
        else:
            state = "absent"  # the source changed since the failed run: start over
    if state == "replace":
        for kind in (schema.IMAGES, schema.MASKS):
            store.delete_group(workspace, schema.group_path(kind, cfg.name))
    if state != "incomplete" or not done.any():
        store.create_template(workspace, images_group, template, n_chunks)
        if with_masks:
            store.create_template(workspace, masks_group, _mask_template(template, source.mask_classes), n_chunks)
        done[:] = False

    tasks = [(i, refs[i * cfg.chunk_size:(i + 1) * cfg.chunk_size], windows[i * cfg.chunk_size:(i + 1) * cfg.chunk_size])
             for i in range(n_chunks) if not done[i]]
    if done.any():
        log.info("dataset %s: resuming, %d of %d chunks already written", cfg.name, int(done.sum()), n_chunks)
    map_tasks(write_chunk, tasks, client=client, progress=progress, stage="write",
              source=source, cfg=cfg, workspace=workspace, with_masks=with_masks)

    if with_masks:
        store.set_attrs(workspace, masks_group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    store.set_attrs(workspace, images_group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    schema.validate_images(store.open_group(workspace, images_group), images_group)
    log.info("dataset %s: %d samples written, %d skipped", cfg.name, len(refs), len(skipped))
    return IngestResult(cfg.name, "resumed" if done.any() else "written", len(refs), len(skipped), skipped)


def ingest(config: RunConfig, workspace: str | os.PathLike[str], *, overwrite: bool = False,
           client: Any = None, progress: ProgressFn | None = None) -> list[IngestResult]:
    """Ingest every dataset of a run config."""
    return [ingest_dataset(d, workspace, overwrite=overwrite, client=client, progress=progress)
            for d in config.datasets]
