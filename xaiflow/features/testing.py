"""Contract checks every feature extractor must pass (xarray/xbatcher's public ``testing`` habit).

The test suite runs :func:`check_extractor` for every name in ``FEATURES``; a new extractor
can run it on its own images too. Each check raises ``AssertionError`` saying what broke.
"""

from __future__ import annotations

import pickle
from typing import Any

import dask.array as da
import numpy as np

from xaiflow.features.base import FeatureExtractor, build_extractor


def check_extractor(extractor: FeatureExtractor, images: np.ndarray, chunk: int = 2, atol: float = 1e-5) -> np.ndarray:
    """Assert the contract of :mod:`xaiflow.features.base` on ``images`` (N, H, W); returns the features.

    Shape ``(N, F)``, float32, finite; ``F`` labels (unique) and families; deterministic;
    rows independent of the batch (chunk-wise == all at once); the same on a dask-backed
    array; the same after pickling (as shipped to a Dask worker); rebuilt from
    ``get_params()`` it gives the same features.
    """
    name = extractor.name
    extractor.fit(images)
    out = extractor.transform(images)
    labels, families = extractor.feature_labels(), extractor.feature_families()
    assert out.shape == (len(images), len(labels)), f"{name}: shape {out.shape} != ({len(images)}, {len(labels)})"
    assert out.dtype == np.float32, f"{name}: dtype {out.dtype}"
    assert np.isfinite(out).all(), f"{name}: non-finite features"
    assert len(set(labels)) == len(labels), f"{name}: feature labels are not unique"
    assert len(families) == len(labels), f"{name}: {len(families)} families for {len(labels)} features"
    assert all(isinstance(s, str) and s for s in labels + families), f"{name}: empty or non-string labels"
    np.testing.assert_array_equal(extractor.transform(images), out, err_msg=f"{name}: not deterministic")
    parts = np.concatenate([extractor.transform(images[i:i + chunk]) for i in range(0, len(images), chunk)])
    np.testing.assert_allclose(parts, out, atol=atol, err_msg=f"{name}: rows depend on the other images of the batch")
    lazy = da.from_array(images, chunks=(chunk, *images.shape[1:]))
    np.testing.assert_allclose(extractor.transform(lazy), out, atol=atol, err_msg=f"{name}: dask input differs")
    shipped: Any = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_allclose(shipped.transform(images), out, atol=atol, err_msg=f"{name}: differs after pickling")
    rebuilt = build_extractor(name, extractor.get_params()).fit(images)
    np.testing.assert_allclose(rebuilt.transform(images), out, atol=atol,
                               err_msg=f"{name}: rebuilding from get_params() gives other features")
    return out
