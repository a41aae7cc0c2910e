"""``panorama`` source: large micrographs (panoramas of many damage sites) cut into tiles.

Every tile is one sample. Its :class:`~xaiflow.sources.base.Window` (offset and size in
the source image) travels into the workspace as the ``tile_y0/tile_x0/tile_h/tile_w``
coordinates, so attribution maps of the tiles can be stitched back onto the panorama.

Tiles step by ``tile - overlap``; where the last step does not reach the border, one more
tile is placed flush with the border, so every source pixel is covered. Images come either
from a glob ``pattern`` (label ``unlabeled``, one specimen per file) or from a CSV with the
same ``columns`` as the ``folder`` source (each tile inherits its image's label and metadata).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceError, Window
from xaiflow.sources.folder import ColumnMap, FolderConfig, FolderSource
from xaiflow.sources.imageio import IMAGE_SUFFIXES, check_size, read_image

#: the default pixel limit of one panorama: 250 MP, 250 MB decoded as uint8 (a 16k x 16k mosaic)
PANORAMA_MAX_PIXELS = 250_000_000


class PanoramaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["panorama"] = "panorama"
    root: Path = Field(description="folder holding the panoramas (and the CSV, if any)")
    pattern: str = Field("*.tif", description="glob of panorama files when no CSV is given")
    csv: str | None = Field(None, description="optional CSV with labels/metadata per panorama")
    columns: ColumnMap = ColumnMap(label=None)
    tile: tuple[int, int] = Field((256, 256), description="(height, width) of each tile in source pixels")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring tiles")
    um_per_px: float | None = Field(None, gt=0)
    max_pixels: int = Field(PANORAMA_MAX_PIXELS, ge=1, le=10**11,
                            description="largest panorama (height x width) to read; a worker decodes a panorama "
                                        "whole once for all its tiles, so this bounds its memory")
    allow_outside_root: bool = Field(False, description="accept CSV rows whose file lies outside root")

    @model_validator(mode="after")
    def _overlap_smaller_than_tile(self) -> "PanoramaConfig":
        if min(self.tile) < 8:
            raise ValueError(f"tile {self.tile} is too small (each side >= 8 px)")
        if self.overlap >= min(self.tile):
            raise ValueError(f"overlap {self.overlap} must be smaller than the tile {self.tile}")
        return self


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis covering ``[0, length)`` with tiles of ``tile`` px."""
    if length < tile:
        return []
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@SOURCES.register("panorama")
class PanoramaSource(ImageSource):
    kind: ClassVar[str] = "panorama"
    Config = PanoramaConfig
    guard_fields = frozenset({"max_pixels", "allow_outside_root"})

    def __init__(self, config: PanoramaConfig) -> None:
        self.config = config
        self._cache: OrderedDict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {"config": self.config, "_cache": None}

    def describe(self) -> str:
        return f"panorama {self.config.root} ({self.config.csv or self.config.pattern}), tiles {self.config.tile}"

    def _images(self) -> list[SampleRef]:
        cfg = self.config
        if cfg.csv is not None:
            folder = FolderSource(FolderConfig(root=cfg.root, csv=cfg.csv, columns=cfg.columns, um_per_px=cfg.um_per_px,
                                               allow_outside_root=cfg.allow_outside_root, max_pixels=cfg.max_pixels))
            return folder.list_samples()
        if not Path(cfg.root).is_dir():
            raise SourceError(f"panorama folder {cfg.root} does not exist")
        files = sorted(p for p in Path(cfg.root).glob(cfg.pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images match {cfg.pattern!r} in {cfg.root}")
        um = cfg.um_per_px if cfg.um_per_px is not None else float("nan")
        root = Path(cfg.root).resolve()
        return [SampleRef(id=p.stem, uri=str(p), label="unlabeled", group=p.stem, um_per_px=um, origin=str(p),
                          problem="" if cfg.allow_outside_root or p.resolve().is_relative_to(root) else
                          f"{p} lies outside the data folder {root}; set source.allow_outside_root: true to read it")
                for p in files]

    def list_samples(self) -> list[SampleRef]:
        th, tw = self.config.tile
        refs: list[SampleRef] = []
        for image in self._images():
            if image.problem:  # reported (or skipped) at ingest, as one bad item
                refs.append(image)
                continue
            try:
                h, w = check_size(Path(image.uri), self.config.max_pixels)
            except SourceError as e:
                refs.append(replace(image, problem=str(e)))
                continue
            ys, xs = tile_starts(h, th, self.config.overlap), tile_starts(w, tw, self.config.overlap)
            if not ys or not xs:
                raise SourceError(f"{image.uri}: image {h}x{w} px is smaller than the tile {th}x{tw}")
            for y0 in ys:
                for x0 in xs:
                    refs.append(replace(image, id=f"{image.id}_y{y0}_x{x0}", window=Window(y0, x0, th, tw)))
        return refs

    def _full(self, uri: str) -> np.ndarray:
        """Decode a panorama once per worker for all of its tiles (keeps the last two)."""
        if self._cache is None:
            self._cache = OrderedDict()
        if uri not in self._cache:
            self._cache[uri] = read_image(Path(uri), self.config.max_pixels)
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[uri]

    def read(self, ref: SampleRef) -> np.ndarray:
        assert ref.window is not None, "panorama samples are tiles"
        win = ref.window
        full = self._full(ref.uri)
        tile = full[win.y0:win.y0 + win.h, win.x0:win.x0 + win.w]
        if tile.shape != (win.h, win.w):
            raise SourceError(f"{ref.uri}: tile {ref.id} lies outside the image ({full.shape})")
        return np.ascontiguousarray(tile)
