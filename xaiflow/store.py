"""The workspace: one Zarr (v3) store holding images, masks and everything derived from them.

Reading goes through xarray (:func:`open_workspace` gives the whole store as a
``DataTree``, :func:`open_group` one dataset). Writing follows one pattern everywhere (the
chunked-job protocol of :mod:`xaiflow.jobs`):

1. :func:`create_template` writes the metadata, the coordinates, empty data variables and
   false per-sample ``done`` flags of a group (``status: incomplete``);
2. independent tasks fill chunk-aligned regions with :func:`write_region` and then set their
   samples' flags (:func:`mark_done`): no two tasks touch one chunk, so retries and parallel
   writers are safe, and a killed run resumes where it stopped (:func:`resume_flags`);
3. :func:`set_attrs` marks the group ``status: complete`` at the end.

Readers refuse incomplete groups (see :mod:`xaiflow.schema`).

What is stored is readable with plain xarray (``xr.open_zarr(ws, group=...)``, no xaiflow import, no
warning): every writer goes through :func:`for_disk` (integer ``sample`` positions with the string ids in
``sample_id``, ``y``/``x`` pixel coordinates, ``y_um``/``x_um`` where the pixel size is known, CF
``long_name``/``units``) and :func:`consolidate` (the root's consolidated metadata, refreshed after every
structural change); :func:`open_group` and :func:`open_workspace` give xaiflow's form back
(:func:`from_disk`: the string ``sample`` index). Image and mask groups carry OME-Zarr metadata
(:mod:`xaiflow.ngff`). xaiflow itself never reads the consolidated metadata (a concurrent writer may
have changed the store since): it opens groups and arrays directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from xaiflow import ngff, schema
from xaiflow.errors import XaiflowError


class WorkspaceError(XaiflowError):
    """The workspace or a group in it is missing or unusable; names the path and group."""


def _sibling(workspace: str | os.PathLike[str], suffix: str) -> str:
    """``ws.zarr`` -> ``ws<suffix>`` beside it (a path, or a URL on the same object store)."""
    if is_url(workspace):
        base = str(workspace).rstrip("/")
        if "/" not in base.split("://", 1)[1]:
            raise WorkspaceError(f"{workspace}: a workspace on object storage needs a path inside its bucket "
                                 "(s3://bucket/ws.zarr): checkpoints and locks go beside it")
        return (base[:-len(".zarr")] if base.endswith(".zarr") else base) + suffix
    path = Path(workspace)
    return str(path.with_name((path.stem if path.suffix == ".zarr" else path.name) + suffix))


def local_sibling(workspace: str | os.PathLike[str], suffix: str) -> str:
    """A local folder named after the workspace for what a person opens (reports, figures): beside the
    store, or in the working directory for a workspace on object storage."""
    if is_url(workspace):
        return Path(_sibling(workspace, suffix).rsplit("/", 1)[-1]).name
    return _sibling(workspace, suffix)


def models_dir(workspace: str | os.PathLike[str]) -> Path:
    """Where a workspace keeps its model checkpoints: ``ws.zarr`` -> ``ws.models/<model_id>/``.

    A sibling folder, not a folder inside the store: zarr and xarray treat every folder of
    a store as part of the hierarchy. A workspace on object storage keeps them at the sibling
    URL and this is its local mirror (:func:`xaiflow.models.remote.mirror_dir`)."""
    if is_url(workspace):
        from xaiflow.models.remote import mirror_dir

        return mirror_dir(models_url(workspace))
    return Path(_sibling(workspace, ".models"))


def models_url(workspace: str | os.PathLike[str]) -> str:
    """The models folder of a workspace on object storage (``s3://b/ws.zarr`` -> ``s3://b/ws.models``)."""
    return _sibling(workspace, ".models")


def is_url(workspace: str | os.PathLike[str]) -> bool:
    """Whether ``workspace`` is an fsspec URL (``s3://bucket/ws.zarr``, ``gs://...``, ``file://...``)."""
    return isinstance(workspace, str) and "://" in workspace


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path on it; a local ``file://`` one creates folders on
    write, as object stores do implicitly."""
    import fsspec

    options = {"auto_mkdir": True} if url.startswith("file://") else {}
    return fsspec.core.url_to_fs(url, **options)


def location(workspace: str | os.PathLike[str]) -> Any:
    """What zarr and xarray open, for reading and writing: the path, or for a workspace on object
    storage an fsspec-backed Zarr store of its URL."""
    if not is_url(workspace):
        return str(Path(workspace))
    from zarr.storage import FsspecStore

    url = str(workspace)
    return FsspecStore.from_url(url, storage_options={"auto_mkdir": True} if url.startswith("file://") else None)


def is_workspace(workspace: str | os.PathLike[str]) -> bool:
    """Whether ``workspace`` holds a Zarr v3 store (a workspace, possibly empty)."""
    if is_url(workspace):
        fs, root = filesystem(str(workspace))
        return bool(fs.exists(f"{root.rstrip('/')}/zarr.json"))
    return (Path(workspace) / "zarr.json").is_file()


def _remove(workspace: str | os.PathLike[str], path: str) -> None:
    """Delete ``path`` (a group or array folder) inside the workspace, on disk or on object storage."""
    if is_url(workspace):
        fs, root = filesystem(str(workspace))
        target = f"{root.rstrip('/')}/{path}"
        if fs.exists(target):
            fs.rm(target, recursive=True)
        return
    target = Path(workspace) / path
    if target.exists():
        shutil.rmtree(target)


def _root(workspace: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """The root group, read from the store itself (not from its consolidated metadata, see the module
    docstring)."""
    if mode == "r" and not is_workspace(workspace):
        raise WorkspaceError(f"{workspace} is not an xaiflow workspace (no Zarr v3 store there); "
                             "create it with `xaiflow ingest`")
    return zarr.open_group(location(workspace), mode=mode, zarr_format=3, use_consolidated=False)


def open_workspace(workspace: str | os.PathLike[str]) -> xr.DataTree:
    """The whole workspace as an ``xarray.DataTree`` (lazy, dask-backed), each group in xaiflow's form
    (:func:`from_disk`)."""
    _root(workspace)
    tree = xr.open_datatree(location(workspace), engine="zarr", consolidated=False, chunks={})
    return tree.map_over_datasets(lambda ds: from_disk(_eager_coords(ds)))


def for_disk(ds: xr.Dataset, positions: np.ndarray | list[int] | None = None) -> xr.Dataset:
    """The stored form of a group's dataset ``ds`` (xaiflow's in-memory form), for every writer.

    * a string ``sample`` index becomes integers, its ids the coordinate ``sample_id(sample)``: plain
      xarray then selects ``ds.sel(sample=2)``, and by id with ``ds.set_xindex("sample_id")`` or
      ``ds.where(ds.sample_id == "...")``. The integers are ``positions``: each sample's position in
      its dataset (``images/<dataset>``, see :func:`dataset_positions`), so one number names one
      micrograph in every group, also in a group of a subset of the samples; by default 0..N-1 (a
      group of every sample in the images' order);
    * every ``y``/``x`` dimension gets its pixel index as coordinate (row 0 is the top of the
      micrograph: plot with ``yincrease=False``), and where ``um_per_px`` is known the physical
      positions ``y_um(sample, y)``/``x_um(sample, x)`` (the pixel size may differ per sample);
    * every variable named in :data:`xaiflow.schema.CF_ATTRS` gets its ``long_name``/``units``,
      unless the writer set them.

    Idempotent; a dataset without a string ``sample`` index keeps its samples. :func:`from_disk` undoes
    the sample change for xaiflow's readers.
    """
    ds = ds.copy()
    if schema.SAMPLE in ds.indexes and ds[schema.SAMPLE].dtype.kind in "OUT":
        ids = strings(ds[schema.SAMPLE].values).astype(object)  # stored as variable-length strings
        numbers = np.arange(len(ids)) if positions is None else np.asarray(positions)
        ds = ds.assign_coords({schema.SAMPLE: numbers.astype(np.int64),
                               schema.SAMPLE_ID: (schema.SAMPLE, ids, ds[schema.SAMPLE].attrs)})
    pixels = {d: np.arange(ds.sizes[d], dtype=np.int64) for d in (schema.Y, schema.X)
              if d in ds.dims and d not in ds.coords}
    ds = ds.assign_coords(pixels)
    if schema.UM_PER_PX in ds.coords and ds[schema.UM_PER_PX].dims == (schema.SAMPLE,):
        um = np.asarray(ds[schema.UM_PER_PX].values, np.float64)
        if np.isfinite(um).any():
            ds = ds.assign_coords({name: ((schema.SAMPLE, d), um[:, None] * np.arange(ds.sizes[d]))
                                   for name, d in ((schema.Y_UM, schema.Y), (schema.X_UM, schema.X))
                                   if d in ds.dims and name not in ds.coords})
    for name, var in ds.variables.items():
        for key, value in schema.cf_attrs(str(name)).items():
            var.attrs.setdefault(key, value)
    return ds


def from_disk(ds: xr.Dataset) -> xr.Dataset:
    """xaiflow's in-memory form of a stored group: the ids in ``sample_id`` become the ``sample`` index
    again; what only the stored form carries is dropped: ``y_um``/``x_um`` (:func:`for_disk` writes them
    anew) and the OME-Zarr attribute (:func:`write_group` writes it for image and mask groups, and a
    dataset made from an image group must not pass it on). Groups written before the stored form (a
    string ``sample`` index) keep their samples."""
    if schema.SAMPLE_ID in ds.coords and ds[schema.SAMPLE].dtype.kind in "iu":
        ids = ds[schema.SAMPLE_ID]
        ds = ds.drop_vars(schema.SAMPLE_ID).assign_coords(  # the ids as zarr gives them, as in older groups
            {schema.SAMPLE: (schema.SAMPLE, np.asarray(ids.values), ids.attrs)})
    ds = ds.drop_vars([v for v in (schema.Y_UM, schema.X_UM) if v in ds.coords]).copy(deep=False)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != ngff.ATTR}
    return ds


def dataset_positions(workspace: str | os.PathLike[str], group: str, ds: xr.Dataset) -> np.ndarray | None:
    """The positions of ``ds``'s samples (a string ``sample`` index) in the images of the dataset that
    ``group`` (``<kind>/<dataset>/...``) belongs to; None where that is 0..N-1 anyway, or where not every
    sample is among those images (then the group numbers its own samples)."""
    parts = group.split("/")
    images = schema.group_path(schema.IMAGES, parts[1]) if len(parts) > 1 else None
    if (schema.SAMPLE not in ds.indexes or ds[schema.SAMPLE].dtype.kind not in "OUT" or parts[0] == schema.IMAGES
            or not group_exists(workspace, images)):
        return None
    ids = pd.Index(sample_ids(zarr.open_group(location(workspace), path=images, mode="r", zarr_format=3)))
    found = ids.get_indexer(strings(ds[schema.SAMPLE].values))
    if (found < 0).any() or np.array_equal(found, np.arange(len(found))):
        return None
    return found


def sample_ids(group: zarr.Group) -> np.ndarray:
    """The sample ids of a group read with zarr (for a reader that needs only them): ``sample_id`` where
    the group is in the stored form, else the (string) ``sample`` coordinate."""
    return strings(group[schema.SAMPLE_ID if schema.SAMPLE_ID in group.array_keys() else schema.SAMPLE][:])


@contextlib.contextmanager
def _consolidation_lock(workspace: str | os.PathLike[str]) -> Iterator[None]:
    """One consolidation of a local workspace at a time (across processes): two interleaved ones could
    leave the older listing as the last written. On object storage there is no such lock; a later
    write's consolidation repairs a lost one."""
    if is_url(workspace):
        yield
        return
    import fcntl

    path = Path(_sibling(workspace, ".locks")) / "consolidate.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def consolidate(workspace: str | os.PathLike[str]) -> None:
    """Write the root's consolidated metadata of the whole workspace anew.

    Plain ``xr.open_zarr(ws, group=g)`` (``consolidated=None``) opens the root's consolidated metadata
    and trusts it: without it, it warns and lists the store; with a stale one, it gives the old shapes
    and attributes, or misses a new group. So every writer calls this after each structural change
    (a group or array created, resized or deleted, attributes set); writing values does not need it.
    zarr's warning that consolidated metadata is not (yet) part of the Zarr v3 specification is
    silenced here: xarray and zarr-python read it, other readers ignore it.
    """
    with _consolidation_lock(workspace), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", UserWarning)
        zarr.consolidate_metadata(location(workspace), zarr_format=3)


def write_group(workspace: str | os.PathLike[str], group: str, ds: xr.Dataset, *, compute: bool = True,
                encoding: dict[str, Any] | None = None) -> None:
    """Write ``ds`` (xaiflow's form) as ``group``, replacing what was there, in the stored form
    (:func:`for_disk`; an images or masks group with its OME-Zarr metadata, :mod:`xaiflow.ngff`), then
    consolidate. ``compute=False`` writes the metadata and coordinates only (a template whose dask data
    variables are filled later)."""
    ds = for_disk(ds, dataset_positions(workspace, group, ds))
    kind = group.split("/", 1)[0]
    if kind == schema.IMAGES and schema.IMAGE in ds.data_vars:
        ds.attrs[ngff.ATTR] = ngff.image_attrs(ds, group)
    elif kind == schema.MASKS and schema.MASK in ds.data_vars:
        ds.attrs[ngff.ATTR] = ngff.label_attrs(ds, group, schema.group_path(schema.IMAGES, group.split("/")[1]))
    _root(workspace, mode="a")  # creates the workspace on first use
    ds.to_zarr(location(workspace), group=group, mode="w", compute=compute, consolidated=False, zarr_format=3,
               encoding=encoding)
    consolidate(workspace)


def _eager_coords(ds: xr.Dataset, root: zarr.Group | None = None) -> xr.Dataset:
    """Load the small 1-D coordinates (labels, splits, metadata) so selections need no compute:
    from the group ``root`` in one zarr call each where that gives what xarray decodes (same dtype;
    else, e.g. a masked integer, through Dask), not a Dask task per sample chunk."""
    lazy = {k: v for k, v in ds.coords.items() if v.ndim == 1 and v.chunks is not None}
    if not lazy:
        return ds
    values = {}
    for k, v in lazy.items():
        if root is None or k not in root or not _stored_as_decoded(v):
            continue
        direct = np.asarray(root[k][:])
        if direct.dtype == v.dtype and direct.shape == v.shape:
            values[k] = direct
    rest = [k for k in lazy if k not in values]
    # read in this process: small arrays, not worth a round trip to a cluster
    values.update(zip(rest, dask.compute(*(lazy[k].data for k in rest), scheduler="synchronous")))
    return ds.assign_coords({k: (v.dims, values[k], v.attrs) for k, v in lazy.items()})


def _stored_as_decoded(v: xr.DataArray) -> bool:
    """Whether xarray's decoding leaves the stored values of ``v`` as they are: no scale/offset, no
    time units, and no fill value other than NaN to mask (a NaN fill is NaN either way)."""
    enc = v.encoding
    if any(key in enc for key in ("scale_factor", "add_offset", "units", "calendar")):
        return False
    fill = enc.get("_FillValue")
    return fill is None or (isinstance(fill, float) and np.isnan(fill))


def list_groups(workspace: str | os.PathLike[str]) -> list[str]:
    """Paths of all groups that hold arrays (the datasets), e.g. ``["images/uhcs", "masks/uhcs"]``."""
    root = _root(workspace)
    found: list[str] = []

    def walk(group: zarr.Group, prefix: str) -> None:
        if any(True for _ in group.array_keys()):
            found.append(prefix)
        for name, sub in sorted(group.groups()):
            walk(sub, f"{prefix}/{name}" if prefix else name)

    walk(root, "")
    return [g for g in found if g]


def group_exists(workspace: str | os.PathLike[str], group: str) -> bool:
    if not is_workspace(workspace):
        return False
    try:
        zarr.open_group(location(workspace), path=group, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return True


def open_group(workspace: str | os.PathLike[str], group: str, check_complete: bool = True,
               by_shard: bool = False) -> xr.Dataset:
    """One dataset of the workspace, lazily (dask-backed): a Dask chunk per stored chunk, or per shard
    with ``by_shard`` (for reads of a whole collection, see :func:`_shard_chunks`)."""
    if not group_exists(workspace, group):
        existing = ", ".join(list_groups(workspace)) if is_workspace(workspace) else "none"
        raise WorkspaceError(f"{workspace}: group {group!r} does not exist (groups: {existing})")
    path, chunks = location(workspace), _shard_chunks(workspace, group) if by_shard else None
    with warnings.catch_warnings():  # whole-array 1-D coordinates are split by the sample chunks: read apart below
        warnings.filterwarnings("ignore", "The specified chunks separate the stored chunks", UserWarning)
        ds = xr.open_zarr(path, group=group, consolidated=False, zarr_format=3,
                          **({"chunks": chunks} if chunks else {}))
    ds = from_disk(_eager_coords(ds, zarr.open_group(path, path=group, mode="r", zarr_format=3)))
    if check_complete and ds.attrs.get(schema.ATTR_STATUS) != schema.STATUS_COMPLETE:
        raise WorkspaceError(
            f"{workspace}: group {group!r} is incomplete (status={ds.attrs.get(schema.ATTR_STATUS)!r}); "
            "re-run the step that writes it"
        )
    return ds


def _shard_chunks(workspace: str | os.PathLike[str], group: str) -> dict[str, int] | None:
    """Dask chunks of one shard along samples when the group's arrays are sharded (``xaiflow.layout``):
    a task then reads one shard file (at most ``layout.SHARD_BYTES``) instead of each inner chunk
    separately, which is several times faster for whole-collection queries. None: unsharded."""
    shards = [a.shards[0] for _, a in zarr.open_group(location(workspace), path=group, mode="r",
                                                      zarr_format=3).arrays() if a.shards]
    return {schema.SAMPLE: max(shards)} if shards else None


def strings(values: Any) -> np.ndarray:
    """A string coordinate as a plain numpy unicode array (Zarr 3 gives numpy StringDType)."""
    return np.array(np.asarray(values).tolist(), dtype=str)


def group_attrs(workspace: str | os.PathLike[str], group: str) -> dict[str, Any]:
    return dict(zarr.open_group(location(workspace), path=group, mode="r", zarr_format=3).attrs)


def set_attrs(workspace: str | os.PathLike[str], group: str, **attrs: Any) -> None:
    zarr.open_group(location(workspace), path=group, mode="r+", zarr_format=3).attrs.update(attrs)
    consolidate(workspace)


def delete_group(workspace: str | os.PathLike[str], group: str) -> None:
    """Remove a group and everything in it (used by ``--overwrite``)."""
    if group_exists(workspace, group):
        _remove(workspace, group)
        consolidate(workspace)


def delete_array(workspace: str | os.PathLike[str], group: str, name: str) -> None:
    """Remove one variable of a group (used when a method is recomputed with --overwrite)."""
    _remove(workspace, f"{group}/{name}")
    consolidate(workspace)


def create_template(workspace: str | os.PathLike[str], group: str, ds: xr.Dataset) -> None:
    """Write coordinates, attrs and empty (lazy) data variables of ``group``, marked incomplete.

    ``ds``'s data variables should be dask arrays chunked as they are to be stored; only
    their metadata is written here. Per-sample ``done`` flags, false, chunked like the samples
    of the data variables, are added.
    """
    ds = ds.copy()
    size = next(v.data.chunksize[0] for v in ds.data_vars.values() if v.dims[:1] == (schema.SAMPLE,))
    ds[schema.DONE] = xr.DataArray(np.zeros(ds.sizes[schema.SAMPLE], bool), dims=(schema.SAMPLE,))
    ds.attrs[schema.ATTR_STATUS] = schema.STATUS_INCOMPLETE
    write_group(workspace, group, ds, compute=False, encoding={schema.DONE: {"chunks": (size,)}})


def write_region(workspace: str | os.PathLike[str], group: str, variable: str, start: int, data: np.ndarray) -> None:
    """Write ``data`` into ``variable[start:start+len(data)]`` (chunk-aligned by the caller)."""
    arr = zarr.open_array(location(workspace), path=f"{group}/{variable}", mode="r+", zarr_format=3)
    arr[start:start + len(data)] = data


def read_region(workspace: str | os.PathLike[str], path: str, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` of the array at ``path`` (e.g. ``images/uhcs/image``), read straight from
    Zarr: a chunk task needs one array, and opening the whole xarray group (every coordinate) per
    task can cost more than the task's own work."""
    return np.asarray(zarr.open_array(location(workspace), path=path, mode="r", zarr_format=3)[start:stop])


def mark_done(workspace: str | os.PathLike[str], group: str, start: int, stop: int) -> None:
    """Flag samples ``start:stop`` of ``group`` done (after their values are written)."""
    write_region(workspace, group, schema.DONE, start, np.ones(stop - start, bool))


def resume_flags(workspace: str | os.PathLike[str], group: str) -> np.ndarray:
    """The per-sample ``done`` flags of an incomplete group a job is about to resume.

    A group written with per-chunk flags (``chunk_done``, before per-sample flags) is converted
    first: each sample gets its chunk's flag, chunked like the samples, and ``chunk_done`` is
    removed; nothing else of the group changes.
    """
    root = zarr.open_group(location(workspace), path=group, mode="r+", zarr_format=3)
    names = set(root.array_keys())
    if schema.DONE not in names and schema.LEGACY_CHUNK_DONE in names:
        chunk_flags = np.asarray(root[schema.LEGACY_CHUNK_DONE][:], bool)
        first = next(root[k] for k in sorted(names) if root[k].metadata.dimension_names
                     and root[k].metadata.dimension_names[0] == schema.SAMPLE and root[k].ndim > 1)
        n, size = first.shape[0], first.chunks[0]
        flags = np.repeat(chunk_flags, size)[:n]
        root.create_array(schema.DONE, shape=(n,), chunks=(size,), dtype=bool, fill_value=False,
                          dimension_names=(schema.SAMPLE,))[:] = flags
        _remove(workspace, f"{group}/{schema.LEGACY_CHUNK_DONE}")
        consolidate(workspace)
    return np.asarray(zarr.open_array(location(workspace), path=f"{group}/{schema.DONE}", mode="r",
                                      zarr_format=3)[:], bool)
