"""One annotation session: which images an annotator sees, in which order, and what they submit.

The order is random but reproducible: seeded by the dataset and the annotator id, so a restarted
session shows the same sequence, and it skips what the annotator already submitted
(:func:`xaiflow.annotations.annotated_samples`), so a session resumes where the last one stopped.
It is stratified by class: the images are dealt round by round, one of each class per round (in a
freshly shuffled class order each round), so an expert who stops after 20 images has seen every
class about equally often, while the position in the sequence says little about the class (a fixed
cycle of classes would give it away after one round).

The page addresses an image by its position in this order, never by sample id or file name: the
sample ids of a collection often carry the class (``network-s03-i2``), and the true label and the
model's outputs stay hidden from the expert.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Sequence

import numpy as np
import zarr
from PIL import Image

from xaiflow import schema, store
from xaiflow.annotations import (
    ANNOTATOR_ID,
    AnnotationError,
    StaleAnnotationsError,
    annotated_samples,
    write_annotation,
)

#: percentiles of one image mapped to black and white when it is not already 8-bit
DISPLAY_PERCENTILES = (0.5, 99.5)


def resolve_dataset(workspace: str | os.PathLike[str], dataset: str | None) -> str:
    """The dataset the session annotates: ``dataset`` if the workspace has ``images/<dataset>``, else the
    only dataset it has; the error lists the candidates."""
    found = sorted(g.split("/", 1)[1] for g in store.list_groups(workspace) if g.startswith(f"{schema.IMAGES}/"))
    listed = ", ".join(found) or "none; ingest one with `xaiflow ingest`"
    if dataset is not None:
        if dataset not in found:
            raise AnnotationError(f"{workspace}: no dataset {dataset!r} to annotate (datasets: {listed})")
        return dataset
    if len(found) != 1:
        raise AnnotationError(f"{workspace}: {'several datasets' if found else 'no dataset'} to annotate "
                              f"(datasets: {listed}); choose one with --dataset")
    return found[0]


def check_annotator(annotator: str) -> str:
    if not ANNOTATOR_ID.match(annotator):
        raise AnnotationError(f"annotator id {annotator!r}: use 1-64 letters, digits, '_', '.' or '-' "
                              "(e.g. initials or a staff id)")
    return annotator


def session_seed(dataset: str, annotator: str) -> int:
    """The order's seed: the same for the same dataset and annotator, on every machine and restart."""
    return int.from_bytes(hashlib.sha256(f"{dataset}\0{annotator}".encode()).digest()[:8], "big")


def stratified_order(labels: Sequence[str], seed: int) -> list[int]:
    """Indices of ``labels`` in a random order dealt round-robin over the classes (see the module doc)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    queues = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in sorted(set(labels.tolist()))}
    order: list[int] = []
    for i in range(max((len(q) for q in queues.values()), default=0)):
        order += [queues[c][i] for c in rng.permutation(sorted(queues)).tolist() if i < len(queues[c])]
    return order


def render_png(image: np.ndarray) -> bytes:
    """One grey-level image as PNG bytes: 8-bit images as they are, others (uint16, float) scaled to
    0-255 between the image's own :data:`DISPLAY_PERCENTILES` (so a 12-bit detector range or a
    float image is visible without a global calibration)."""
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(values, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
        image = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class AnnotationSession:
    """One annotator on one dataset (optionally one split) of a workspace.

    Construction validates everything (workspace, dataset, annotator id, split, annotations made for
    these images) so that a command fails before a server starts. Thread-safe: the server's request
    threads share one session, and its submissions are written one at a time (two browser tabs of
    the annotator submitting one image would otherwise interleave the writes of one cell). When the
    images are ingested again while it runs, images and submissions are refused (restart it).
    """

    def __init__(self, workspace: str | os.PathLike[str], dataset: str | None, annotator: str, *,
                 split: str | None = None) -> None:
        self.annotator = check_annotator(annotator)
        self.workspace = workspace
        self.dataset = resolve_dataset(workspace, dataset)
        self.group = schema.group_path(schema.IMAGES, self.dataset)
        images = store.open_group(workspace, self.group)
        self.classes = [str(c) for c in images.attrs.get(schema.ATTR_CLASSES, [])]
        if not self.classes:
            raise AnnotationError(f"{workspace}: {self.group} has no 'classes' attribute to choose from")
        self.height, self.width = images.sizes[schema.Y], images.sizes[schema.X]
        rows = np.arange(images.sizes[schema.SAMPLE])
        if split is not None:
            splits = store.strings(images[schema.SPLIT].values)
            if split not in set(splits.tolist()):
                raise AnnotationError(f"{self.group}: no sample in split {split!r} "
                                      f"(splits: {', '.join(sorted(set(splits.tolist())))})")
            rows = rows[splits == split]
        self.split = split
        labels = store.strings(images[schema.LABEL].values)[rows]
        #: row in images/<dataset> of each position of the order
        self.rows = rows[stratified_order(labels, session_seed(self.dataset, self.annotator))]
        self._ids = store.strings(images[schema.SAMPLE].values)
        self.samples = self._ids[self.rows]
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._done = set(annotated_samples(workspace, self.dataset, self.annotator)) & set(self.samples.tolist())

    @property
    def total(self) -> int:
        return len(self.samples)

    @property
    def n_done(self) -> int:
        with self._lock:
            return len(self._done)

    def sample_at(self, position: int) -> str:
        if not 0 <= position < self.total:
            raise AnnotationError(f"position {position} is outside this session's {self.total} images")
        return str(self.samples[position])

    def next_position(self, after: int | None = None) -> int | None:
        """The first position not yet submitted after ``after`` (wrapping round; from the start when
        None), or None when every image of the session is done."""
        start = 0 if after is None else after + 1
        with self._lock:
            for k in range(self.total):
                position = (start + k) % self.total
                if self.samples[position] not in self._done:
                    return position
        return None

    def check_images(self) -> None:
        """Refuse to go on when ``images/<dataset>`` no longer has the samples this session's order was
        made from (re-ingested meanwhile): a position would show or store another image."""
        ids = store.sample_ids(zarr.open_group(store.location(self.workspace), path=self.group, mode="r",
                                               zarr_format=3))
        if not np.array_equal(ids, self._ids):
            raise StaleAnnotationsError(f"{self.workspace}: {self.group} was ingested again since this annotation "
                                        "session started; stop it (Ctrl-C) and run `xaiflow annotate` again")

    def image_png(self, position: int) -> bytes:
        self.sample_at(position)
        self.check_images()
        row = int(self.rows[position])
        return render_png(store.read_region(self.workspace, f"{self.group}/{schema.IMAGE}", row, row + 1)[0])

    def submit(self, position: int, *, label: str, confidence: float, region: np.ndarray, seconds: float) -> None:
        """Store one submission (it replaces an earlier one of this annotator for the image)."""
        sample = self.sample_at(position)
        with self._write_lock:  # one submission of this session at a time (see the class doc)
            self.check_images()
            write_annotation(self.workspace, self.dataset, sample, self.annotator, label=label,
                             confidence=confidence, region=region, seconds=seconds)
        with self._lock:
            self._done.add(sample)
