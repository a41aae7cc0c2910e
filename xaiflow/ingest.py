"""Source -> fixed-shape samples -> chunked Zarr: the ``images/<dataset>`` (and ``masks/``) groups.

Ingestion runs in three steps, each safe to interrupt, the last two as chunked jobs
(:mod:`xaiflow.jobs`):

1. **list** the source (cheap, on the client): CSV rows, files, labels, ids;
2. **scan** (:class:`ScanJob`, one task per batch of ``chunk_size`` samples): decode, plan the
   window, check the mask, so that every bad item is reported at once, *before anything is
   written*: with ``on_error: raise`` nothing is written at all; with ``on_error: skip`` bad
   items are left out and recorded in the ``skipped`` attribute;
3. **write** (:class:`WriteJob`, one task per shard of ``shard_chunks`` chunks of ``chunk_size``
   samples, or per chunk in a group without shards: :mod:`xaiflow.layout`) into a template
   created up front, each task writing its own shard-aligned region and then its samples'
   ``done`` flags. The group is marked ``complete`` only at the end, so a failed ingest never
   looks complete, and re-running the same config resumes the missing chunks. Which samples
   have a mask (``has_mask``) is decided once, when the template is made, and travels with
   the write tasks: a mask that was there then and is missing when its chunk is written is an
   error naming the file (never an all-zero mask passing for an annotation); a mask that
   appeared since is not read (the sample stays without mask until a re-ingest with
   ``overwrite``). A finished ingest with the same config is a no-op; a different config for
   an existing dataset is refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import dask.array as da
import numpy as np
import xarray as xr

import xaiflow
from xaiflow import layout, schema, store
from xaiflow.config import DatasetConfig, RunConfig
from xaiflow.errors import XaiflowError
from xaiflow.geometry import convert_dtype, plan_window, resample
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.maskspec import has_mask
from xaiflow.runtime import ProgressFn
from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceError, Window
from xaiflow.splits import SplitError, assign_splits, given_splits

log = logging.getLogger("xaiflow")


class IngestError(XaiflowError):
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


# ---------------------------------------------------------------- scan (job)

def _name(ref: SampleRef) -> str:
    return f"{ref.origin}: {ref.uri}" if ref.origin and ref.origin != ref.uri else ref.uri


@dataclass(frozen=True)
class ScanJob(ChunkJob):
    """Step 2: per sample, the window to cut (relative to ``source.read``) or the error message.

    Writes nothing; chunk payloads are the sample refs (every listed sample, in order), and
    :meth:`finalize` returns one entry per sample, in the same order.
    """

    stage = "scan"
    cfg: DatasetConfig
    source: ImageSource
    state: str  # what the workspace holds for this dataset (see _existing_state)

    def run_chunk(self, chunk: Chunk) -> list[Window | str]:
        out: list[Window | str] = []
        for ref in chunk.payload:
            if ref.problem:
                out.append(f"{ref.origin}: {ref.problem}")
                continue
            try:
                img = self.source.read(ref)
                win = plan_window(img.shape[0], img.shape[1], ref.um_per_px, self.cfg.geometry, _name(ref))
                mask = self.source.read_mask(ref)
                if mask is not None and mask.shape != img.shape:
                    raise SourceError(f"{_name(ref)}: mask shape {mask.shape} differs from the image's {img.shape}")
                out.append(win)
            except SourceError as e:
                msg = str(e)
                out.append(msg if ref.origin in msg else f"{ref.origin}: {msg}")
        return out

    def finalize(self, results: list[list[Window | str]]) -> list[Window | str]:
        return [w for batch in results for w in batch]


# ---------------------------------------------------------------- write (job)

@dataclass(frozen=True)
class WriteJob(ChunkJob):
    """Step 3: read, cut, resample and write each chunk of samples; payloads are (refs, windows,
    has_mask flags as stored in the masks template)."""

    stage = "write"
    cfg: DatasetConfig
    source: ImageSource
    with_masks: bool
    resumed: bool
    n_samples: int
    skipped_items: tuple[dict[str, str], ...]

    def run_chunk(self, chunk: Chunk) -> int:
        refs, windows, flagged = chunk.payload
        size = self.cfg.geometry.size
        images = np.empty((len(refs), *size), dtype=self.cfg.dtype)
        masks = np.empty((len(refs), *size), dtype=np.uint8) if self.with_masks else None
        for j, (ref, win) in enumerate(zip(refs, windows)):
            images[j] = convert_dtype(resample(self.source.read(ref), win, size), self.cfg.dtype)
            if masks is not None:  # not annotated (has_mask False): stored as 0, a mask added since unread
                masks[j] = self._mask(ref, win) if flagged[j] else 0
        images_group = schema.group_path(schema.IMAGES, self.cfg.name)
        store.write_region(self.workspace, images_group, schema.IMAGE, chunk.start, images)
        if masks is not None:
            masks_group = schema.group_path(schema.MASKS, self.cfg.name)
            store.write_region(self.workspace, masks_group, schema.MASK, chunk.start, masks)
            store.mark_done(self.workspace, masks_group, chunk.start, chunk.stop)
        store.mark_done(self.workspace, images_group, chunk.start, chunk.stop)
        return chunk.index

    def _mask(self, ref: SampleRef, win: Window) -> np.ndarray:
        """The resampled mask of a sample flagged ``has_mask`` when the template was made."""
        mask = self.source.read_mask(ref)
        if mask is None:
            raise SourceError(f"{self.source.describe_mask(ref)}: the mask of sample {ref.id!r} ({_name(ref)}) was "
                              "there when this ingest was planned and is missing now; restore it and re-run the "
                              "ingest (it resumes), or re-ingest with overwrite to store the sample without mask")
        return resample(mask, win, self.cfg.geometry.size, nearest=True)

    def finalize(self, results: list[int]) -> IngestResult:
        images_group = schema.group_path(schema.IMAGES, self.cfg.name)
        if self.with_masks:
            store.set_attrs(self.workspace, schema.group_path(schema.MASKS, self.cfg.name),
                            **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        store.set_attrs(self.workspace, images_group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        schema.validate_images(store.open_group(self.workspace, images_group), images_group)
        log.info("dataset %s: %d samples written, %d skipped", self.cfg.name, self.n_samples,
                 len(self.skipped_items))
        return IngestResult(self.cfg.name, "resumed" if self.resumed else "written", self.n_samples,
                            len(self.skipped_items), list(self.skipped_items))


# ---------------------------------------------------------------- orchestration (client)

def _check_ids(refs: list[SampleRef]) -> None:
    seen: dict[str, SampleRef] = {}
    for r in refs:
        if r.id in seen:
            raise IngestError(f"duplicate sample id {r.id!r}: {_name(seen[r.id])} and {_name(r)}")
        seen[r.id] = r


def _metadata_coords(refs: list[SampleRef]) -> dict[str, tuple[str, np.ndarray, dict[str, str]]]:
    """Metadata columns as coords: numbers -> float64 (NaN for missing), else strings ('' missing), with a
    ``long_name`` (:data:`xaiflow.schema.CF_ATTRS`, or naming the column).
    A source's ``split`` is not one of them: it becomes the split coordinate (:func:`_splits`)."""
    keys = list(dict.fromkeys(k for r in refs for k in r.metadata if k != schema.SPLIT))
    reserved = set(schema.SAMPLE_COORDS) | {schema.SAMPLE, "source_um_per_px", schema.SAMPLE_ID, schema.Y, schema.X,
                                            schema.Y_UM, schema.X_UM}
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
        coords[k] = (schema.SAMPLE, arr, schema.cf_attrs(k) or {"long_name": f"{k} (metadata column of the source)"})
    return coords


def _classes(cfg: DatasetConfig, refs: list[SampleRef]) -> list[str]:
    declared = getattr(cfg.source, "classes", None)
    return list(declared) if declared else sorted({r.label for r in refs})


def _given_splits(cfg: DatasetConfig, refs: list[SampleRef]) -> list[str] | None:
    """The splits the source gives (None: it gives none); unusable ones raise :class:`IngestError`."""
    try:
        return given_splits(refs)
    except SplitError as e:
        raise IngestError(f"dataset {cfg.name!r}: {e}") from None


def _splits(cfg: DatasetConfig, refs: list[SampleRef]) -> tuple[list[str], str]:
    """(split per sample, how it was made, for the provenance): the source's own when it gives them,
    else assigned by specimen with ``cfg.split``."""
    given = _given_splits(cfg, refs)
    if given is not None:
        log.info("dataset %s: splits given by the source (%s); split.fractions not used", cfg.name,
                 ", ".join(f"{s} {given.count(s)}" for s in schema.SPLITS))
        return given, "given by the source (each sample's split: a CSV column or the source's setting)"
    groups, labels = [r.group for r in refs], [r.label for r in refs]
    return (assign_splits(groups, labels, cfg.split.fractions, cfg.split.seed),
            f"assigned by specimen (fractions {cfg.split.fractions}, seed {cfg.split.seed})")


def build_template(cfg: DatasetConfig, source: ImageSource, refs: list[SampleRef], windows: list[Window],
                   skipped: list[dict[str, str]]) -> xr.Dataset:
    """The images dataset with all coordinates and a lazy (unwritten) image variable."""
    n, (h, w) = len(refs), cfg.geometry.size
    classes = _classes(cfg, refs)
    cidx = {c: i for i, c in enumerate(classes)}
    labels = [r.label for r in refs]
    groups = [r.group for r in refs]
    splits, split_origin = _splits(cfg, refs)
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
    per_shard = layout.chunks_per_shard(cfg.shard_chunks, n, cfg.chunk_size, h * w * np.dtype(cfg.dtype).itemsize)
    # lazy, chunked by the write unit (a shard, else a chunk); stored in chunks of chunk_size
    image = da.zeros((n, h, w), dtype=cfg.dtype, chunks=(cfg.chunk_size * per_shard, h, w))
    ds = xr.Dataset({schema.IMAGE: ((schema.SAMPLE, schema.Y, schema.X), image)}, coords=coords)
    ds[schema.IMAGE].encoding = layout.sample_encoding(cfg.chunk_size, per_shard, (h, w))
    ds.attrs.update({
        schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
        schema.ATTR_CLASSES: classes,
        schema.ATTR_SKIPPED: skipped,
        schema.ATTR_PROVENANCE: {
            "source": source.describe(),
            "config_hash": cfg.config_hash(),
            "config": cfg.model_dump(mode="json"),
            "splits": split_origin,
            "xaiflow_version": xaiflow.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    })
    return ds


def _mask_template(images: xr.Dataset, mask_classes: list[str], has_mask: np.ndarray) -> xr.Dataset:
    keep = [schema.SAMPLE, schema.LABEL, schema.GROUP, schema.SPLIT]
    mask = da.zeros(images[schema.IMAGE].shape, dtype=np.uint8, chunks=images[schema.IMAGE].data.chunks)
    ds = xr.Dataset({schema.MASK: ((schema.SAMPLE, schema.Y, schema.X), mask)},
                    coords={**{k: images[k] for k in keep}, schema.HAS_MASK: (schema.SAMPLE, has_mask)})
    ds[schema.MASK].encoding = dict(images[schema.IMAGE].encoding)  # the images' chunks and shards
    ds.attrs.update({schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_MASK_CLASSES: mask_classes,
                     schema.ATTR_PROVENANCE: images.attrs[schema.ATTR_PROVENANCE]})
    return ds


def _mask_flags(cfg: DatasetConfig, source: ImageSource, refs: list[SampleRef]) -> np.ndarray:
    """Which samples have a mask, reported in one line: masks of a subset of the images are normal."""
    flags = np.array([source.has_mask(r) for r in refs], bool)
    n, k = len(flags), int(flags.sum())
    if k < n:
        log.warning("dataset %s: masks: %d of %d images have a mask; %d without (not annotated: localization "
                    "metrics skip them)", cfg.name, k, n, n - k)
    else:
        log.info("dataset %s: masks: all %d images have a mask", cfg.name, n)
    return flags


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


def changed_datasets(config: RunConfig, workspace: str | os.PathLike[str]) -> list[str]:
    """Names of the config's datasets that ``workspace`` holds with another config (what ingest would
    refuse without ``overwrite``), read from the stored hashes before any work starts."""
    changed = []
    for dataset in config.datasets:
        try:
            _existing_state(str(workspace), dataset, overwrite=False)
        except IngestError:
            changed.append(dataset.name)
    return changed


def _format_errors(cfg: DatasetConfig, errors: list[str], limit: int = 20) -> str:
    lines = [f"dataset {cfg.name!r}: {len(errors)} bad item(s) (set on_error: skip to ingest the rest):"]
    lines += [f"  - {e}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    return "\n".join(lines)


JobRunner = Callable[[ChunkJob], Any]


def scan_job(cfg: DatasetConfig, workspace: str | os.PathLike[str], *,
             overwrite: bool = False) -> ScanJob | IngestResult:
    """Plan step 2: list the source and return the scan job; an :class:`IngestResult` instead when
    the dataset is up to date (same config, complete)."""
    workspace = str(workspace)
    state = _existing_state(workspace, cfg, overwrite)
    if state == "complete":
        ds = store.open_group(workspace, schema.group_path(schema.IMAGES, cfg.name))
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
    _given_splits(cfg, refs)  # unusable given splits are refused before any pixel is read
    chunks = pending_chunks(np.ones(len(refs), bool), cfg.chunk_size, lambda a, b: refs[a:b])
    return ScanJob(workspace, cfg, source, state, chunks=chunks, n_chunks=len(chunks))


def write_job(scan: ScanJob, scanned: list[Window | str]) -> WriteJob:
    """Plan step 3 from the scan's outcome: refuse (``raise``) or record (``skip``) bad items,
    create the template (or resume a matching incomplete ingest), list the chunks to write."""
    cfg, workspace, source = scan.cfg, scan.workspace, scan.source
    listed = [r for chunk in scan.chunks for r in chunk.payload]
    errors = [w for w in scanned if isinstance(w, str)]
    if errors and cfg.on_error == "raise":
        raise IngestError(_format_errors(cfg, errors))
    skipped = [{"id": r.id, "file": r.uri, "reason": w} for r, w in zip(listed, scanned) if isinstance(w, str)]
    for item in skipped:
        log.warning("skipped %s: %s", item["id"], item["reason"])
    kept = [(r, w) for r, w in zip(listed, scanned) if isinstance(w, Window)]
    if not kept:
        raise IngestError(_format_errors(cfg, errors) + "\nno sample is left to ingest")
    refs, windows = [r for r, _ in kept], [w for _, w in kept]

    template = build_template(cfg, source, refs, windows, skipped)
    with_masks = source.mask_classes is not None
    images_group, masks_group = (schema.group_path(kind, cfg.name) for kind in (schema.IMAGES, schema.MASKS))
    state = scan.state
    done = np.zeros(len(refs), bool)
    flags = np.zeros(len(refs), bool)  # has_mask, as the masks template stores it
    if state == "incomplete":
        old = store.open_group(workspace, images_group, check_complete=False)
        if list(old[schema.SAMPLE].values) == list(template[schema.SAMPLE].values):
            done = store.resume_flags(workspace, images_group)
            if with_masks and store.group_exists(workspace, masks_group):
                done &= store.resume_flags(workspace, masks_group)
                flags = has_mask(store.open_group(workspace, masks_group, check_complete=False))
            elif with_masks:
                done[:] = False  # no masks template: start over
        else:
            state = "absent"  # the source changed since the failed run: start over
    if state == "replace":
        for group in (images_group, masks_group):
            store.delete_group(workspace, group)
    if state != "incomplete" or not done.any():
        store.create_template(workspace, images_group, template)
        if with_masks:
            flags = _mask_flags(cfg, source, refs)
            store.create_template(workspace, masks_group, _mask_template(template, source.mask_classes, flags))
        done[:] = False
    unit = layout.write_unit(workspace, f"{images_group}/{schema.IMAGE}")  # a task writes whole shards
    chunks = pending_chunks(~done, unit, lambda a, b: (refs[a:b], windows[a:b], flags[a:b]))
    n_chunks = chunk_count(len(refs), unit)
    if done.any():
        log.info("dataset %s: resuming, %d of %d chunks already written", cfg.name, n_chunks - len(chunks), n_chunks)
    return WriteJob(workspace, cfg, source, with_masks, bool(done.any()), len(refs), tuple(skipped), chunks=chunks,
                    n_chunks=n_chunks)


def ingest_dataset(cfg: DatasetConfig, workspace: str | os.PathLike[str], *, overwrite: bool = False,
                   client: Any = None, progress: ProgressFn | None = None,
                   runner: JobRunner | None = None) -> IngestResult:
    """Ingest one dataset into the workspace (see the module docstring for the guarantees).

    ``runner`` runs a chunked job (default: :func:`xaiflow.jobs.run_job` on ``client``).
    """
    runner = runner or partial(run_job, client=client, progress=progress)
    with group_lock(workspace, schema.group_path(schema.IMAGES, cfg.name), f"ingest of dataset {cfg.name!r}"):
        scan = scan_job(cfg, workspace, overwrite=overwrite)
        if isinstance(scan, IngestResult):
            return scan
        return runner(write_job(scan, runner(scan)))


def ingest(config: RunConfig, workspace: str | os.PathLike[str], *, overwrite: bool = False,
           client: Any = None, progress: ProgressFn | None = None,
           runner: JobRunner | None = None) -> list[IngestResult]:
    """Ingest every dataset of a run config."""
    return [ingest_dataset(d, workspace, overwrite=overwrite, client=client, progress=progress, runner=runner)
            for d in config.datasets]
