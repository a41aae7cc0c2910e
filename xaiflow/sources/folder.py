"""``folder`` source: a folder of PNG/TIFF/JPEG micrographs plus a CSV of labels and metadata.

The CSV column names are configurable (``columns``), so a lab's existing spreadsheet can be
used as it is. Example for the UHCS data (``configs/uhcs.yaml``)::

    source:
      kind: folder
      root: ${XAIFLOW_UHCS_DIR:-../../shared/data/uhcs}
      csv: metadata.csv
      columns: {file: file, label: primary_microconstituent, group: sample_key,
                um_per_px: um_per_px, metadata: [detector, magnification]}

A lab's own held-out design is kept: with ``columns: {split: my_split_column}`` each row's
split (``train``, ``val`` or ``test``; every row needs one) is used by ingest instead of its
own specimen split.

Optional expert masks: a folder of label images matched to the micrographs by file name
(``masks: {dir: masks, suffix: .png, classes: [matrix, carbide], encoding: index|binary}``, or an
explicit ``values: {0: matrix, 255: carbide}``); micrographs without a mask file are "not
annotated" (``has_mask`` False in the masks group), see docs/masks.md.

The CSV is data, not configuration: a row whose file resolves outside ``root`` (``../``, an
absolute path, a symlink pointing elsewhere) is refused unless ``allow_outside_root: true``;
a cell that is not a number where one is expected is that row's problem only; an image
declaring more than ``max_pixels`` pixels is refused before it is decoded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceError
from xaiflow.sources.imageio import DEFAULT_MAX_PIXELS, read_image
from xaiflow.sources.maskio import MAX_LABEL_VALUE, read_label_image, to_class_indices, value_table


class ColumnMap(BaseModel):
    """Which CSV column holds what. ``None`` means the CSV has no such column."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field("file", description="image path relative to the folder")
    label: str | None = Field("label", description="class label; None for unlabelled data")
    group: str | None = Field(None, description="specimen id, used to split without leakage")
    um_per_px: str | None = Field(None, description="physical pixel size in micrometres")
    id: str | None = Field(None, description="sample id; default: the file name without suffix")
    metadata: list[str] = Field(default_factory=list, description="extra columns kept as coordinates")
    # left out of dumps when unset, so configs (and config hashes) written before it stay the same
    split: str | None = Field(None, exclude_if=lambda v: v is None,
                              description="each image's split (train, val or test), kept by ingest instead of "
                                          "its own specimen split; every row needs one")


class MaskFolder(BaseModel):
    """Expert/ground-truth label images matched to the micrographs by file stem; a micrograph
    without a mask file is "not annotated" (see :mod:`xaiflow.sources.maskio` for the encodings)."""

    model_config = ConfigDict(extra="forbid")
    dir: Path = Field(description="folder of mask images, relative to the source root")
    suffix: str = ".png"
    classes: list[str] = Field(min_length=2, description="mask class names, in class-index order")
    encoding: Literal["index", "binary"] = Field(
        "index", description="index: pixel value = class index; binary: two classes, 0 and 255 (or 1)")
    values: dict[int, str] | None = Field(
        None, description="explicit pixel value -> class name (instead of the encoding), e.g. "
                          "{0: matrix, 255: carbide}")

    @model_validator(mode="after")
    def _check(self) -> MaskFolder:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"masks.classes has duplicates: {self.classes}")
        if len(self.classes) > 256:
            raise ValueError(f"masks.classes: at most 256 classes (uint8 masks), got {len(self.classes)}")
        if self.encoding == "binary" and len(self.classes) != 2:
            raise ValueError(f"masks.encoding binary needs exactly two classes, got {self.classes}")
        if self.values is not None:
            unknown = sorted(set(self.values.values()) - set(self.classes))
            bad = [k for k in self.values if not 0 <= k <= MAX_LABEL_VALUE]
            if unknown or bad or not self.values:
                raise ValueError(f"masks.values: pixel values 0..{MAX_LABEL_VALUE} to class names of "
                                 f"{self.classes}; unknown classes {unknown}, bad values {bad}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # the defaults are left out so that a dataset ingested before these fields existed keeps its config hash
        data = handler(self)
        if data.get("encoding") == "index":
            data.pop("encoding")
        if data.get("values") is None:
            data.pop("values", None)
        return data


class FolderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["folder"] = "folder"
    root: Path = Field(description="folder holding the CSV and the images")
    csv: str = Field("labels.csv", description="CSV file, relative to root")
    columns: ColumnMap = ColumnMap()
    classes: list[str] | None = Field(
        None, description="the expected classes; a label outside them is an error (default: all labels found)"
    )
    um_per_px: float | None = Field(None, gt=0, description="pixel size when the CSV has no such column")
    max_per_group_label: int | None = Field(
        None, ge=1, description="keep at most this many images per (specimen, label): a stratified subset"
    )
    masks: MaskFolder | None = None
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, le=10**10,
                            description="largest image (height x width) to decode; larger files are refused "
                                        "from their header")
    allow_outside_root: bool = Field(False, description="accept CSV rows whose file lies outside root "
                                                        "(refused by default: the CSV is data)")


def _number(value: Any) -> float | None:
    """A CSV cell as a number (None when empty); a ValueError for text that is not one."""
    value = _clean(value)
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError
    if isinstance(value, (int, float)):
        return float(value)
    return float(str(value).strip())


def _text(value: Any) -> str | None:
    """A CSV cell as text, None when empty (a split column's cell: checked by ingest)."""
    value = _clean(value)
    return None if value is None or value is pd.NA or str(value) == "" else str(value)


def _clean(value: Any) -> Any:
    """CSV cell -> plain Python value; float ids like 18.0 become '18'."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    if hasattr(value, "item"):
        return value.item()
    return value


@SOURCES.register("folder")
class FolderSource(ImageSource):
    kind: ClassVar[str] = "folder"
    Config = FolderConfig
    guard_fields = frozenset({"max_pixels", "allow_outside_root"})

    def __init__(self, config: FolderConfig) -> None:
        self.config = config
        self.mask_classes = list(config.masks.classes) if config.masks else None

    @property
    def csv_path(self) -> Path:
        return Path(self.config.root) / self.config.csv

    def describe(self) -> str:
        return f"folder {self.csv_path}"

    def read_table(self) -> pd.DataFrame:
        """The CSV with all configured columns checked to exist."""
        if not Path(self.config.root).is_dir():
            raise SourceError(
                f"data folder {self.config.root} does not exist (set the path in the config, "
                "the env var it names, or --data-dir)"
            )
        try:
            table = pd.read_csv(self.csv_path, dtype_backend="numpy_nullable")
        except FileNotFoundError:
            raise SourceError(f"{self.csv_path}: CSV file not found") from None
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise SourceError(f"{self.csv_path}: cannot parse CSV ({e})") from None
        cols = self.config.columns
        wanted = {"file": cols.file, "label": cols.label, "group": cols.group,
                  "um_per_px": cols.um_per_px, "id": cols.id, "split": cols.split}
        wanted.update({f"metadata[{i}]": c for i, c in enumerate(cols.metadata)})
        for role, col in wanted.items():
            if col is not None and col not in table.columns:
                raise SourceError(
                    f"{self.csv_path}: column {col!r} (columns.{role}) not found; "
                    f"available columns: {', '.join(map(str, table.columns))}"
                )
        return table

    def list_samples(self) -> list[SampleRef]:
        cfg, cols = self.config, self.config.columns
        table = self.read_table()
        if cfg.masks is not None and not self.mask_dir.is_dir():
            raise SourceError(f"mask folder {self.mask_dir} (source.masks.dir) does not exist")
        root = Path(cfg.root).resolve()
        refs: list[SampleRef] = []
        for i, row in enumerate(table.to_dict("records")):
            origin = f"{self.csv_path.name} row {i + 2}"  # +1 header, +1 one-based
            rel = _clean(row[cols.file])
            path = Path(os.path.normpath(Path(cfg.root) / str(rel or "")))
            real = path.resolve()  # symlinks followed: where the bytes really are
            label = "unlabeled" if cols.label is None else _clean(row[cols.label])
            um_cell = row[cols.um_per_px] if cols.um_per_px else None
            try:
                um = _number(um_cell)
            except ValueError:
                um = float("nan")
            if um is None:
                um = cfg.um_per_px
            problem = ""
            if not rel:
                problem = f"column {cols.file!r} is empty"
            elif not cfg.allow_outside_root and not real.is_relative_to(root):
                problem = (f"image file {rel!r} lies outside the data folder {root} (resolves to {real}); "
                           "set source.allow_outside_root: true to read it anyway")
            elif not path.is_file():
                problem = f"image file {path} does not exist"
            elif label is None:
                problem = f"label column {cols.label!r} is empty"
            elif cfg.classes is not None and str(label) not in cfg.classes:
                problem = f"unknown label {label!r}; expected one of {cfg.classes}"
            elif um is not None and not um > 0:
                problem = f"column {cols.um_per_px!r} must be a positive number, got {_clean(um_cell)!r}"
            sample_id = str(_clean(row[cols.id])) if cols.id else (path.stem or f"row{i + 2}")
            group = _clean(row[cols.group]) if cols.group else None
            refs.append(SampleRef(
                id=sample_id, uri=str(path), label=str(label),
                group=str(group) if group is not None else sample_id,
                um_per_px=float(um) if um is not None and um > 0 else float("nan"),
                metadata={**{c: _clean(row[c]) for c in cols.metadata},
                          **({"split": _text(row[cols.split])} if cols.split else {})},
                origin=origin, problem=problem,
            ))
        if cfg.max_per_group_label:
            refs = _stratified_subset(refs, cfg.max_per_group_label)
        return refs

    def read(self, ref: SampleRef) -> np.ndarray:
        return read_image(Path(ref.uri), self.config.max_pixels)

    @property
    def mask_dir(self) -> Path:
        assert self.config.masks is not None
        mask_dir = Path(self.config.masks.dir)
        return mask_dir if mask_dir.is_absolute() else Path(self.config.root) / mask_dir

    def mask_path(self, ref: SampleRef) -> Path:
        assert self.config.masks is not None
        return self.mask_dir / (Path(ref.uri).stem + self.config.masks.suffix)

    def has_mask(self, ref: SampleRef) -> bool:
        """Is there a mask file for this micrograph? (Masks may cover a subset of the images.)"""
        return self.config.masks is not None and self.mask_path(ref).is_file()

    def describe_mask(self, ref: SampleRef) -> str:
        return f"mask file {self.mask_path(ref)}" if self.config.masks is not None else super().describe_mask(ref)

    def read_mask(self, ref: SampleRef) -> np.ndarray | None:
        """Class indices of the micrograph's mask, decoded by the configured encoding; None when
        the source has no masks or this micrograph has no mask file (not annotated)."""
        masks = self.config.masks
        if masks is None:
            return None
        path = self.mask_path(ref)
        if not path.is_file():
            return None
        real, folder = path.resolve(), self.mask_dir.resolve()
        if not self.config.allow_outside_root and not real.is_relative_to(folder):
            raise SourceError(f"mask file {path} lies outside the mask folder {folder} (resolves to {real}); "
                              "set source.allow_outside_root: true to read it anyway")
        raw = read_label_image(path, self.config.max_pixels)
        return to_class_indices(raw, masks.classes, value_table(masks.classes, masks.encoding, masks.values), path)


def _stratified_subset(refs: list[SampleRef], k: int) -> list[SampleRef]:
    """First ``k`` samples (by id) of every (group, label) pair, in the original order."""
    keep: set[str] = set()
    buckets: dict[tuple[str, str], list[SampleRef]] = {}
    for r in refs:
        buckets.setdefault((r.group, r.label), []).append(r)
    for bucket in buckets.values():
        keep.update(r.id for r in sorted(bucket, key=lambda r: r.id)[:k])
    return [r for r in refs if r.id in keep]
