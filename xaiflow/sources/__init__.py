"""Image sources: where micrographs come from before they enter the workspace.

Importing this package registers the built-in sources in :data:`SOURCES`: ``folder`` (a
folder of images and a CSV), ``panorama`` (large images cut into tiles) and ``synthetic``
(generated microstructures with known masks). Contract: :mod:`xaiflow.sources.base`.
"""

from xaiflow.sources import folder, panorama, synthetic  # noqa: F401  (register the sources)
from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceConfig, SourceError, Window

__all__ = ["SOURCES", "ImageSource", "SampleRef", "SourceConfig", "SourceError", "Window"]
