"""Image sources: where micrographs come from before they enter the workspace.

An :class:`ImageSource` lists the samples it can provide (:meth:`list_samples`) and reads
one sample's pixels (:meth:`read`) and, where it has them, its ground-truth or expert mask
(:meth:`read_mask`). Listing must be cheap (no pixel decoding beyond image headers);
reading must be deterministic and safe to call from any Dask worker process, so a source
is a small picklable object holding only its configuration.

To add a source: subclass :class:`ImageSource`, set ``kind`` and ``Config`` (a pydantic
model with ``kind: Literal[...]`` and ``extra="forbid"``), and register it with
``@SOURCES.register(kind)`` in a module imported by :mod:`xaiflow.sources` (or by a plugin
module named in ``$XAIFLOW_PLUGINS``). A run config's ``source:`` section is then validated
by that ``Config`` (:data:`SourceConfig` looks the kind up in :data:`SOURCES` when a config is
read), and :func:`xaiflow.testing.check_source` checks the contract on one of its configs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, PlainValidator

from xaiflow.errors import XaiflowError
from xaiflow.registry import Registry


class SourceError(XaiflowError):
    """A sample cannot be listed or read; the message names the file, row or field."""


@dataclass(frozen=True)
class Window:
    """A rectangle in source-image pixels: the part of the source a sample is cut from."""

    y0: int
    x0: int
    h: int
    w: int


@dataclass(frozen=True)
class SampleRef:
    """One sample a source can provide.

    ``id`` is unique within the source; ``uri`` says where the pixels come from (a file
    path, or ``synthetic://...``); ``window`` is set when the sample is a tile of a
    larger image (panoramas), else ``None`` (the whole image).
    """

    id: str
    uri: str
    label: str
    group: str
    um_per_px: float = float("nan")
    metadata: dict[str, Any] = field(default_factory=dict)
    window: Window | None = None
    #: where the sample was declared (e.g. "metadata.csv row 12"), for error messages
    origin: str = ""
    #: a problem found while listing (missing file, unknown label): the sample is reported
    #: as bad at ingest (an error, or a skip record with ``on_error: skip``) and never read
    problem: str = ""


class ImageSource(ABC):
    """Base class of all image sources (see the module docstring for the contract)."""

    kind: ClassVar[str]
    #: the pydantic model of its ``source:`` config section (``kind: Literal[<kind>]``)
    Config: ClassVar[type[BaseModel]]
    #: fields of ``Config`` that guard reading (size limits, path permissions) without changing what
    #: is read: left out of the dataset's config hash, so tightening a limit keeps a workspace current
    guard_fields: ClassVar[frozenset[str]] = frozenset()

    #: names of the mask classes (index = pixel value), or None when the source has no masks
    mask_classes: list[str] | None = None

    @abstractmethod
    def list_samples(self) -> list[SampleRef]:
        """All samples, in a deterministic order. Raises :class:`SourceError` on bad listings."""

    @abstractmethod
    def read(self, ref: SampleRef) -> np.ndarray:
        """Pixels of one sample as a 2-D (H, W) array; raises :class:`SourceError` if unreadable."""

    def read_mask(self, ref: SampleRef) -> np.ndarray | None:
        """The (H, W) uint8 mask of one sample (class indices, same geometry as :meth:`read`), or None
        when the source has no masks or this sample has none (masks may cover a subset)."""
        return None

    def has_mask(self, ref: SampleRef) -> bool:
        """Whether :meth:`read_mask` returns a mask for this sample; cheap (no decoding)."""
        return self.mask_classes is not None

    def describe_mask(self, ref: SampleRef) -> str:
        """Where :meth:`read_mask` reads the sample's mask from, for messages (a file's path)."""
        return f"mask of {ref.uri}"

    def describe(self) -> str:
        """A short human-readable description for provenance (e.g. the folder path)."""
        return self.kind


SOURCES: Registry[type[ImageSource]] = Registry("image source")


def _source_config(value: Any) -> BaseModel:
    """A ``source:`` section validated by the ``Config`` of the source registered under its ``kind``."""
    if isinstance(value, BaseModel):
        return value
    kind = value.get("kind") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in SOURCES:
        raise ValueError(f"kind: unknown image source {kind!r}; valid: {', '.join(SOURCES.names())}")
    return SOURCES.get(kind).Config.model_validate(value)


#: the type of a run config's ``source:`` section: whichever registered source its ``kind`` names
SourceConfig = Annotated[Any, PlainValidator(_source_config)]
