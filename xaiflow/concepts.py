"""Concept scores (TCAV, Kim et al. 2018): does the model's decision for a class follow a concept
the scientist can name, such as "carbide network" or "spheroidite particles"?

A **concept** is a set of example images the user already has (:class:`ConceptSpec`):

* ``mask``: patches of the dataset's images in which one mask class covers at least
  ``min_fraction`` of the pixels (e.g. a phase of an expert segmentation), optionally only from
  images of one ``label``; patches keep their pixel size (activations are averaged per channel,
  so any input size works, and the structures keep the scale the model knows);
* ``metadata``: the images whose coordinate ``coord`` equals ``value`` (a detector, a lab);
* ``folder``: the images of a folder (PNG/TIFF/JPEG, size checked before decoding), resized.

Against a concept stand ``runs`` **random counterpart** sets (random patches of the same size from
random images of the dataset when any concept is a mask concept, else random images). At each ``layer`` a linear classifier separates
the concept's activations from one random set's: its normal is the concept activation vector
(CAV). For the ``target`` samples of class ``k`` (the test split by default), the TCAV score is
the share whose logit ``k`` grows along the CAV (the directional derivative
``grad_h logit_k . cav > 0``). Random CAVs (one random set against another) give the scores of
no concept; a two-sided Welch t-test of the concept's ``runs`` scores against them gives a p-value per
(concept, layer, class), corrected over all of them (Holm-Bonferroni). A concept **drives** a
class when its corrected p-value is below ``alpha`` and its mean score is above its random CAVs' mean.

Work and storage (``concepts/<dataset>/<model_id>/``): the activations and gradients of the
target samples (per channel: :func:`layer_activations`) are a chunked job (:mod:`xaiflow.jobs`: one Dask task per image chunk, resumable)
into ``activations``; the example sets' activations (one Dask task per set) into ``examples``;
the CAV fits (one Dask task per concept or random pair, layer and run) give ``tcav``:
``score(concept, layer, class, run)``, ``random_score`` (of the concept's random CAVs, same dims),
``cav_accuracy(concept, layer, run)``, ``p_value``, ``p_adjusted`` and ``significant`` per
(concept, layer, class), with the settings in ``attrs["provenance"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xaiflow import layout, schema, store
from xaiflow.device import check_device_name, resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.maskspec import has_mask
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.preprocess import to_input
from xaiflow.runtime import ProgressFn, map_tasks, worker_compute

CONCEPTS = "concepts"
#: most examples in one concept or random set (activations are examples x features per layer)
MAX_EXAMPLES = 2000
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: images per forward (and backward) pass of :func:`layer_activations`
BATCH = 32
_HOOKS = threading.Lock()


class ConceptError(XaiflowError):
    """A concept cannot be built or scored (no example, unknown mask class or layer, ...)."""


class ConceptSpec(BaseModel):
    """One concept: where its example images come from (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a name for tables and figures")
    kind: Literal["mask", "metadata", "folder"]
    mask_class: str | None = Field(None, description="mask: the mask class the patches show")
    label: str | None = Field(None, description="mask: only patches of images of this class")
    min_fraction: float = Field(0.6, gt=0, le=1, description="mask: least share of the patch in the mask class")
    patch: int = Field(0, ge=0, le=4096, description="mask: patch side in px (0: half the image side)")
    coord: str | None = Field(None, description="metadata: the coordinate to match")
    value: str | None = Field(None, description="metadata: the value it must have")
    folder: str | None = Field(None, description="folder: directory of example images")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> ConceptSpec:
        if self.name.startswith("random_"):
            raise ValueError(f"concept name {self.name!r}: names starting with 'random_' are the random counterparts'")
        need = {"mask": ("mask_class",), "metadata": ("coord", "value"), "folder": ("folder",)}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"concept {self.name!r} of kind {self.kind!r} needs {', '.join(missing)}")
        return self


#: the per-concept options of a mask concept's text (``,min=0.5,patch=8``) and their fields
MASK_OPTIONS = {"min": "min_fraction", "patch": "patch"}


def parse_concept(text: str) -> ConceptSpec:
    """``name=mask:CLASS[@LABEL][,min=F][,patch=P]``, ``name=meta:COORD=VALUE`` or ``name=folder:PATH``
    (the CLI's and the config's form)."""
    try:
        name, rest = text.split("=", 1)
        kind, arg = rest.split(":", 1)
    except ValueError:
        raise ConceptError(f"concept {text!r}: expected name=mask:CLASS[@LABEL], name=meta:COORD=VALUE or "
                           "name=folder:PATH") from None
    try:
        if kind == "mask":
            main, *options = arg.split(",")
            mask_class, _, label = main.partition("@")
            extra = {}
            for option in options:
                key, _, value = option.partition("=")
                if key not in MASK_OPTIONS:
                    raise ValueError(f"unknown option {key!r}; valid: {', '.join(MASK_OPTIONS)}")
                extra[MASK_OPTIONS[key]] = value
            return ConceptSpec(name=name, kind="mask", mask_class=mask_class, label=label or None, **extra)
        if kind == "meta":
            coord, _, value = arg.partition("=")
            return ConceptSpec(name=name, kind="metadata", coord=coord, value=value)
        if kind == "folder":
            return ConceptSpec(name=name, kind="folder", folder=arg)
    except ValueError as e:
        raise ConceptError(f"concept {text!r}: {e}") from None
    raise ConceptError(f"concept {text!r}: unknown kind {kind!r}; valid: mask, meta, folder")


def with_defaults(spec: ConceptSpec, min_fraction: float, patch: int) -> ConceptSpec:
    """A mask concept with the run's ``min_fraction`` and ``patch`` where its text did not set them."""
    if spec.kind != "mask":
        return spec
    given = {"min_fraction": min_fraction, "patch": patch}
    return spec.model_copy(update={k: v for k, v in given.items() if k not in spec.model_fields_set})


def concepts_group(dataset: str, model_id: str, part: str) -> str:
    return schema.group_path(CONCEPTS, dataset, model_id, part)


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if images.shape[1:] == size:
        return images.astype(np.float32)
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _patches(images: np.ndarray, masks: np.ndarray | None, k: int | None, side: int, stride: int,
             min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Every ``side`` patch on a ``stride`` grid (and, with masks, only those with ``min_fraction`` of class
    ``k``): (patches, index of their image)."""
    n, h, w = images.shape
    out, owner = [], []
    for y in range(0, h - side + 1, stride):
        for x in range(0, w - side + 1, stride):
            keep = np.ones(n, bool) if masks is None else (masks[:, y:y + side, x:x + side] == k).mean((1, 2)) >= min_fraction
            out.append(images[keep, y:y + side, x:x + side])
            owner.append(np.flatnonzero(keep))
    return np.concatenate(out), np.concatenate(owner)


def _rows_of(workspace: str, path: str, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` of the stored array at ``path``, read straight from Zarr."""
    import zarr

    return np.asarray(zarr.open_array(store.location(workspace), path=path, mode="r", zarr_format=3)
                      .get_orthogonal_selection((rows,)))


def _dataset_images(workspace: str, dataset: str, rows: np.ndarray) -> np.ndarray:
    return _rows_of(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}", rows)


def concept_examples(workspace: str, dataset: str, spec: ConceptSpec, pool: np.ndarray, size: tuple[int, int],
                     max_examples: int, seed: int) -> np.ndarray:
    """Up to ``max_examples`` example images of ``spec`` at ``size`` (seeded draw); ``pool``: the samples
    concepts may take examples from (those not scored, so a concept never contains its targets)."""
    rng = np.random.default_rng(seed)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    if spec.kind == "folder":
        from xaiflow.sources.imageio import read_image

        folder = Path(spec.folder).resolve()
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and p.resolve().is_relative_to(folder)) if folder.is_dir() else []  # no link out of it
        if not files:
            raise ConceptError(f"concept {spec.name!r}: no image ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        files = [files[i] for i in sorted(rng.permutation(len(files))[:max_examples])]
        return np.stack([_resize(read_image(f)[None].astype(np.float32), size)[0] for f in files])
    if spec.kind == "metadata":
        if spec.coord not in images.coords:
            raise ConceptError(f"concept {spec.name!r}: no coordinate {spec.coord!r}; coordinates: "
                               f"{sorted(map(str, images.coords))}")
        values = store.strings(images[spec.coord].values)
        rows = pool[values[pool] == spec.value]
        if not len(rows):
            raise ConceptError(f"concept {spec.name!r}: no image with {spec.coord} == {spec.value!r} among the "
                               f"{len(pool)} candidates; values: {sorted(set(values.tolist()))[:20]}")
        rows = np.sort(rng.permutation(rows)[:max_examples])
        return _dataset_images(workspace, dataset, rows).astype(np.float32)
    masks_path = schema.group_path(schema.MASKS, dataset)
    if not store.group_exists(workspace, masks_path):
        raise ConceptError(f"concept {spec.name!r}: dataset {dataset!r} has no masks")
    classes = list(store.group_attrs(workspace, masks_path)[schema.ATTR_MASK_CLASSES])
    if spec.mask_class not in classes:
        raise ConceptError(f"concept {spec.name!r}: no mask class {spec.mask_class!r}; mask classes: {classes}")
    rows = pool[has_mask(store.open_group(workspace, masks_path))[pool]]  # images with a mask (a subset may have)
    if spec.label is not None:
        labels = store.strings(images[schema.LABEL].values)
        if spec.label not in set(labels.tolist()):
            raise ConceptError(f"concept {spec.name!r}: no class {spec.label!r}; classes: {sorted(set(labels.tolist()))}")
        rows = rows[labels[rows] == spec.label]
    side = spec.patch or size[0] // 2
    if side > min(size):
        raise ConceptError(f"concept {spec.name!r}: patch {side} px is larger than the {size[0]}x{size[1]} px images")
    imgs = _dataset_images(workspace, dataset, rows)
    masks = _rows_of(workspace, f"{masks_path}/{schema.MASK}", rows)
    patches, _ = _patches(imgs, masks, classes.index(spec.mask_class), side, max(1, side // 2), spec.min_fraction)
    if not len(patches):
        raise ConceptError(f"concept {spec.name!r}: no {side} px patch with {spec.min_fraction:.0%} of "
                           f"{spec.mask_class!r} in {len(rows)} images; lower min_fraction or the patch size")
    return patches[np.sort(rng.permutation(len(patches))[:max_examples])].astype(np.float32)


def random_examples(workspace: str, dataset: str, pool: np.ndarray, side: int | None, n: int,
                    seed: int) -> np.ndarray:
    """``n`` random images of ``pool`` (or, with ``side``, random patches of that side): the
    counterpart of a concept, of the same kind of picture without the concept's selection."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    imgs = _dataset_images(workspace, dataset, rows)
    if not side:
        return imgs.astype(np.float32)
    h, w = imgs.shape[1:]
    ys, xs = rng.integers(0, h - side + 1, n), rng.integers(0, w - side + 1, n)
    which = rng.integers(0, len(imgs), n)
    return np.stack([imgs[i, y:y + side, x:x + side] for i, y, x in zip(which, ys, xs)]).astype(np.float32)


class _Capture:
    """Forward hooks keeping the outputs of named layers (their gradient is kept after backward)."""

    def __init__(self, model: torch.nn.Module, layers: list[str], grads: bool) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [model.get_layer(name).register_forward_hook(self._hook(name, grads)) for name in layers]

    def _hook(self, name: str, grads: bool) -> Callable[..., None]:
        def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            if grads:
                output.retain_grad()
            self.out[name] = output

        return keep

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _pooled(t: torch.Tensor, how: str) -> np.ndarray:
    """(B, C, h, w) -> (B, C): the mean (activations) or sum (gradients) over positions; (B, D) as it is."""
    if t.ndim > 2:
        t = t.flatten(2)
        t = t.mean(2) if how == "mean" else t.sum(2)
    return t.detach().float().cpu().numpy()


def layer_activations(model: torch.nn.Module, images: np.ndarray, layers: list[str], device: torch.device,
                      targets: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per channel: the activations of ``layers`` for ``images`` averaged over positions, and with
    ``targets`` the gradient of each image's target logit with respect to them summed over positions
    (batch norm in eval mode: samples stay independent).

    Why per channel: a concept direction ``v`` over channels, added at every position, changes the
    logit by ``sum_c v_c sum_{y,x} grad[c, y, x]``, so this pair gives TCAV's directional derivative
    for position-free concepts (a phase is a phase wherever it lies); and a CAV over C channels is
    fitted reliably from tens of examples, where one over C x h x w flattened values overfits."""
    if len(images) > BATCH:
        parts = [layer_activations(model, images[b:b + BATCH], layers, device,
                                   None if targets is None else targets[b:b + BATCH])
                 for b in range(0, len(images), BATCH)]
        return {k: (np.concatenate([p[k][0] for p in parts]),
                    None if targets is None else np.concatenate([p[k][1] for p in parts])) for k in layers}
    with _HOOKS:  # hooks on a model other threads of the process share (the worker's cached model)
        return _one_batch(model, images, layers, device, targets)


def _one_batch(model: torch.nn.Module, images: np.ndarray, layers: list[str], device: torch.device,
               targets: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    model.eval()
    cap = _Capture(model, layers, grads=targets is not None)
    try:
        x = to_input(images).to(device)
        if targets is None:
            with torch.no_grad():
                model(x)
            return {k: (_pooled(v, "mean"), None) for k, v in cap.out.items()}
        logits = model(x)
        logits.gather(1, torch.as_tensor(targets, device=device).long()[:, None]).sum().backward()
        return {k: (_pooled(v, "mean"), _pooled(v.grad, "sum")) for k, v in cap.out.items()}
    finally:
        cap.close()
        model.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class ActivationJob(ChunkJob):
    """Activations and target-logit gradients at each layer for the scored samples of each image chunk."""

    stage = "concept activations"
    dataset: str
    model: ModelEntry
    layers: tuple[str, ...]
    device: str

    @property
    def group(self) -> str:
        return concepts_group(self.dataset, self.model.model_id, "activations")

    def run_chunk(self, chunk: Chunk) -> int:
        rows = np.asarray(chunk.payload)
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        images = store.read_region(self.workspace, image, chunk.start, chunk.stop)
        labels = store.read_region(self.workspace, f"{self.group}/{schema.LABEL_INDEX}", chunk.start, chunk.stop)
        device = resolve_device(self.device)
        with worker_compute():
            model = self.model.cached(device)
            found = layer_activations(model, images[rows], list(self.layers), device, labels[rows])
        for layer, (act, grad) in found.items():
            for kind, values in (("act", act), ("grad", grad)):
                full = np.full((chunk.stop - chunk.start, values.shape[1]), np.nan, np.float32)
                full[rows] = values
                store.write_region(self.workspace, self.group, f"{kind}__{layer}", chunk.start, full)
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return chunk.index

    def finalize(self, results: list[int]) -> str:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return self.group


def _features(model: ModelEntry, layers: list[str], size: tuple[int, int]) -> dict[str, int]:
    net = model.load()
    found = layer_activations(net, np.zeros((1, *size), np.float32), layers, torch.device("cpu"))
    return {k: v[0].shape[1] for k, v in found.items()}


def prepare_activations(workspace: str, model: ModelEntry, dataset: str, layers: list[str], targets: np.ndarray,
                        device: str, overwrite: bool) -> ActivationJob:
    """Lay out (or resume) the activations of the ``targets`` (a bool per sample) at ``layers``."""
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    size = (images.sizes[schema.Y], images.sizes[schema.X])
    group = concepts_group(dataset, model.model_id, "activations")
    provenance = {"model_id": model.model_id, "checkpoint_sha256": model.sha256, "layers": layers, "features": "channel",
                  "targets_sha1": hashlib.sha1(np.packbits(targets).tobytes()).hexdigest(),
                  "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}
    unit = layout.chunk_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    same = (store.group_exists(workspace, group) and not overwrite
            and store.group_attrs(workspace, group).get(schema.ATTR_PROVENANCE) == provenance)
    if same:
        pending = ~store.resume_flags(workspace, group) & targets
    else:
        store.delete_group(workspace, group)
        n = images.sizes[schema.SAMPLE]
        variables = {}
        for layer, d in _features(model, layers, size).items():
            dims = (schema.SAMPLE, f"feature__{layer}")
            meaning = {"act": f"activation of layer {layer}, mean per channel",
                       "grad": f"gradient of the target class logit by the activation of layer {layer}, summed per channel"}
            for kind, long_name in meaning.items():
                variables[f"{kind}__{layer}"] = (dims, da.zeros((n, d), dtype=np.float32, chunks=(unit, d)),
                                                 {"long_name": long_name})
        scored = (schema.SAMPLE, targets, {"long_name": "sample whose activations are scored"})
        ds = xr.Dataset(variables, coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object),
                                           schema.LABEL_INDEX: images[schema.LABEL_INDEX], "scored": scored},
                        attrs={schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_PROVENANCE: provenance})
        store.create_template(workspace, group, ds)
        pending = targets
    chunks = pending_chunks(pending, unit, payload=lambda a, b: np.flatnonzero(targets[a:b]))
    return ActivationJob(workspace, dataset, model, tuple(layers), device, chunks=chunks,
                         n_chunks=chunk_count(len(targets), unit))


def _set_activations(make: Callable[[], np.ndarray], model: ModelEntry, layers: list[str],
                     device: str) -> dict[str, np.ndarray]:
    """One example set's activations (a Dask task): ``make`` draws the set (seeded, so the worker draws
    what the client checked) where it is used, instead of shipping its pixels in the task graph."""
    dev = resolve_device(device)
    with worker_compute():
        found = layer_activations(model.cached(dev), make(), layers, dev)
    return {k: v[0] for k, v in found.items()}


def _fit_cav(item: tuple[np.ndarray, np.ndarray], seed: int) -> tuple[np.ndarray, float]:
    """A unit CAV separating the activations ``item[0]`` (a concept's, or a random set's) from ``item[1]``
    (a random set's) (a Dask task), and its accuracy on a held-out third of the examples."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    a, b = item
    x, y = np.concatenate([a, b]), np.r_[np.ones(len(a)), np.zeros(len(b))]
    scale = x.std(0).mean() or 1.0
    xtr, xte, ytr, yte = train_test_split(x / scale, y, test_size=1 / 3, random_state=seed, stratify=y)
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on a (nearly) separable set; what matters is the direction's held-out
        # accuracy, which is returned and stored (cav_accuracy), not a warning on a worker's terminal
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=1.0, max_iter=500).fit(xtr, ytr)
    cav = clf.coef_[0] / (np.linalg.norm(clf.coef_[0]) or 1.0)
    return cav.astype(np.float32), float(clf.score(xte, yte))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error over every test; NaN kept out)."""
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    order = ok[np.argsort(flat[ok])]
    m = len(order)
    adjusted = np.full_like(flat, np.nan, dtype=float)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * flat[i]))
        adjusted[i] = running
    return adjusted.reshape(p.shape)


@dataclass(frozen=True)
class TcavSettings:
    """How many random runs, examples per set, and the significance level."""

    runs: int = 10
    examples: int = 50
    alpha: float = 0.05
    seed: int = 0

    def check(self) -> None:
        if not 2 <= self.runs <= 200:
            raise ConceptError(f"runs={self.runs}: give 2 to 200 random runs")
        if not 6 <= self.examples <= MAX_EXAMPLES:
            raise ConceptError(f"examples={self.examples}: give 6 to {MAX_EXAMPLES} examples per set")
        if not 0 < self.alpha < 1:
            raise ConceptError(f"alpha={self.alpha}: give a level in (0, 1)")


def run_tcav(workspace: str | os.PathLike[str], model_id: str, dataset: str, concepts: list[ConceptSpec], *,
             layers: list[str] | None = None, split: str = "test", settings: TcavSettings = TcavSettings(),
             device: str = "cpu", overwrite: bool = False, client: Any = None, progress: ProgressFn | None = None,
             runner: Callable[[ChunkJob], Any] | None = None) -> str:
    """Score every concept for every class at every layer (module docstring); returns the ``tcav`` group."""
    from scipy.stats import ttest_ind

    workspace = str(workspace)
    check_device_name(device)
    settings.check()
    if not concepts:
        raise ConceptError("no concept given")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ConceptError(f"concept names must differ: {names}")
    entry = ModelCatalog(workspace).get(model_id)
    net = entry.load()
    layers = layers or [net.cam_layer]
    for layer in layers:
        net.get_layer(layer)  # unknown layer: an error listing the valid ones
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    size = (images.sizes[schema.Y], images.sizes[schema.X])
    splits = store.strings(images[schema.SPLIT].values)
    targets = splits == split
    if not targets.any():
        raise ConceptError(f"no sample in split {split!r}; splits: {sorted(set(splits.tolist()))}")
    pool = np.flatnonzero(~targets)  # examples never come from the scored samples
    runner = runner or partial(run_job, client=client, progress=progress)
    group = concepts_group(dataset, entry.model_id, "tcav")
    with group_lock(workspace, group, f"concept scores of {entry.model_id}"):
        sets: dict[str, Callable[[], np.ndarray]] = {}
        counts = {}
        for i, spec in enumerate(concepts):  # drawn here first: a concept that cannot be built stops the run now
            draw = partial(concept_examples, workspace, dataset, spec, pool, size, settings.examples, settings.seed + i)
            examples = draw()
            counts[spec.name] = len(examples)
            if len(examples) < 6:
                raise ConceptError(f"concept {spec.name!r}: {len(examples)} example(s); a CAV needs at least 6")
            # a folder is read here (workers may not see it), the workspace's images where they are used
            sets[spec.name] = partial(np.asarray, examples) if spec.kind == "folder" else draw
        # random counterparts of the same kind of picture as each concept: patches of its side, or whole images
        sides = {c.name: (c.patch or size[0] // 2) if c.kind == "mask" else 0 for c in concepts}
        randoms = {side: [f"random_{side or 'image'}_{r}" for r in range(settings.runs + 1)]
                   for side in sorted(set(sides.values()))}
        for side, names_of_side in randoms.items():
            for r, name in enumerate(names_of_side):
                sets[name] = partial(random_examples, workspace, dataset, pool, side or None, settings.examples,
                                     settings.seed + 1000 + r)
        runner(prepare_activations(workspace, entry, dataset, layers, targets, device, overwrite))
        acts = dict(zip(sets, map_tasks(_set_activations, list(sets.values()), client=client, stage="concept sets",
                                        name="concept_set", model=entry, layers=layers, device=device)))
        null = {c: randoms[sides[c]] for c in names}  # each concept's random sets
        pairs = [(c, null[c][r], layer) for c in names for layer in layers for r in range(settings.runs)]
        pairs += [(rs[r], rs[r + 1], layer) for rs in randoms.values() for layer in layers for r in range(settings.runs)]
        items = [(acts[pos][layer], acts[neg][layer]) for pos, neg, layer in pairs]  # each task gets its two sets
        fits = dict(zip(pairs, map_tasks(_fit_cav, items, client=client, stage="CAV fits", name="cav_fit",
                                         seed=settings.seed)))
        ds = _scores(workspace, dataset, entry, layers, classes, names, null, fits, settings, ttest_ind)
        ds.attrs[schema.ATTR_PROVENANCE] = {
            "model_id": entry.model_id, "checkpoint_sha256": entry.sha256, "layers": layers, "split": split,
            "runs": settings.runs, "examples": settings.examples, "alpha": settings.alpha, "seed": settings.seed,
            "concepts": [json.loads(c.model_dump_json()) for c in concepts],
            "examples_per_set": counts}
        store.delete_group(workspace, group)
        store.write_group(workspace, group, ds)
    return group


def _scores(workspace: str, dataset: str, entry: ModelEntry, layers: list[str], classes: list[str], names: list[str],
            null: dict[str, list[str]], fits: dict, settings: TcavSettings, ttest: Callable[..., Any]) -> xr.Dataset:
    """TCAV scores of every CAV for the scored samples of every class, and the tests against the random
    CAVs of each concept's random sets (``null``: concept -> its random set names)."""
    acts = store.open_group(workspace, concepts_group(dataset, entry.model_id, "activations"))
    scored = acts["scored"].values
    label = acts[schema.LABEL_INDEX].values
    runs = settings.runs
    score = np.full((len(names), len(layers), len(classes), runs), np.nan)
    random_score = np.full((len(names), len(layers), len(classes), runs), np.nan)
    accuracy = np.full((len(names), len(layers), runs), np.nan)
    for j, layer in enumerate(layers):
        grads = acts[f"grad__{layer}"].values
        for k in range(len(classes)):
            g = grads[scored & (label == k)]
            if not len(g):
                continue
            for r in range(runs):
                for i, c in enumerate(names):
                    cav, acc = fits[(c, null[c][r], layer)]
                    score[i, j, k, r] = float((g @ cav > 0).mean())
                    accuracy[i, j, r] = acc
                    random_score[i, j, k, r] = float((g @ fits[(null[c][r], null[c][r + 1], layer)][0] > 0).mean())
    with warnings.catch_warnings():  # runs that all score 1.0 (or 0.0) are a clear answer, not a precision problem
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        p = np.array([[[ttest(score[i, j, k], random_score[i, j, k], equal_var=False).pvalue
                        if np.isfinite(score[i, j, k]).all() else np.nan
                        for k in range(len(classes))] for j in range(len(layers))] for i in range(len(names))])
    adjusted = holm(p)
    mean = score.mean(axis=-1)
    return xr.Dataset(
        {"score": (("concept", "layer", "class", "run"), score.astype(np.float32)),
         "random_score": (("concept", "layer", "class", "run"), random_score.astype(np.float32)),
         "cav_accuracy": (("concept", "layer", "run"), accuracy.astype(np.float32)),
         "mean_score": (("concept", "layer", "class"), mean.astype(np.float32)),
         "p_value": (("concept", "layer", "class"), p), "p_adjusted": (("concept", "layer", "class"), adjusted),
         "significant": (("concept", "layer", "class"),
                         (adjusted < settings.alpha) & (mean > random_score.mean(axis=-1)))},
        coords={"concept": np.array(names, object), "layer": np.array(layers, object),
                "class": np.array(classes, object), "run": np.arange(runs)},
        attrs={schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_CLASSES: classes,
               schema.ATTR_STATUS: schema.STATUS_COMPLETE})


def tcav_table(ds: xr.Dataset) -> list[dict[str, Any]]:
    """One row per (class, concept, layer), the strongest first within a class."""
    rows = []
    for k in ds["class"].values:
        part = []
        for c in ds["concept"].values:
            for layer in ds["layer"].values:
                sel = {"concept": c, "layer": layer, "class": k}
                part.append({"class": str(k), "concept": str(c), "layer": str(layer),
                             "tcav": float(ds["mean_score"].sel(sel)),
                             "std": float(ds["score"].sel(sel).std()),
                             "random": float(ds["random_score"].sel(sel).mean()),
                             "cav_accuracy": float(ds["cav_accuracy"].sel(concept=c, layer=layer).mean()),
                             "p_adjusted": float(ds["p_adjusted"].sel(sel)),
                             "significant": bool(ds["significant"].sel(sel))})
        rows += sorted(part, key=lambda r: -r["tcav"])
    return rows


def tcav_figure(ds: xr.Dataset, path: str | os.PathLike[str], layer: str | None = None) -> Path:
    """Bars of the mean TCAV score (with the spread over runs) per class and concept at ``layer`` (the
    last by default), each concept's random CAVs' mean as a dash, significant bars marked with a star."""
    import matplotlib.pyplot as plt

    from xaiflow.figures import save_figure

    layer = layer or str(ds["layer"].values[-1])
    sel = ds.sel(layer=layer)
    classes, names = [str(c) for c in ds["class"].values], [str(c) for c in ds["concept"].values]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(classes) * max(1, len(names) / 2), 3.4))
    for i, name in enumerate(names):
        xs = np.arange(len(classes)) + i * width
        mean = sel["mean_score"].sel(concept=name).values
        std = sel["score"].sel(concept=name).std("run").values
        ax.bar(xs, mean, width, yerr=std, label=name, capsize=2)
        ax.plot(xs, sel["random_score"].sel(concept=name).mean("run").values, "k_", markersize=10,
                label="its random CAVs" if i == 0 else None)
        for x, m, s in zip(xs, mean, sel["significant"].sel(concept=name).values):
            if s:
                ax.text(x, min(1.0, m + 0.05), "*", ha="center")
    ax.set(xticks=np.arange(len(classes)) + 0.4 - width / 2, xticklabels=classes, ylim=(0, 1.1),
           ylabel="TCAV score", title=f"concept sensitivity at {layer} (* significant after Holm correction)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
