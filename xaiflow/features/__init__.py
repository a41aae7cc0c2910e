"""Feature extractors: CNN activations and classic texture statistics, behind one registry.

``FEATURES.names()`` lists them; :func:`build_extractor` builds one by name with checked
parameters; :mod:`xaiflow.features.extract` writes ``features/<dataset>/<key>`` to the
workspace with one Dask task per image chunk. Importing this package does not import torch
(the CNN extractor imports it when it runs).
"""

from xaiflow.features import cnn, texture, twopoint  # noqa: F401  (registers the extractors)
from xaiflow.features.base import FEATURES, FeatureError, FeatureExtractor, build_extractor

__all__ = ["FEATURES", "FeatureError", "FeatureExtractor", "build_extractor"]
