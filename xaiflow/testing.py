"""Contract checks for every extension point: attribution methods, metrics, feature extractors,
image sources and model architectures (xarray's and xbatcher's public ``testing`` habit).

The project's own test suite runs these over every registry entry (methods crossed with every
registered architecture), so a new plugin is tested by registering it and nothing else; the
author of a plugin in another package can run them on its own data too. Each check raises
``AssertionError`` saying what broke and returns what it computed. The checks use each
plugin's ``quick_params`` (models: ``quick_hparams``), so they stay fast on a CPU.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import dask.array as da
import numpy as np
import torch
from torch import Tensor, nn

from xaiflow.attribution import METHODS, make_method
from xaiflow.errors import XaiflowError
from xaiflow.features.base import FeatureExtractor, build_extractor
from xaiflow.metrics import METRICS, make_metric
from xaiflow.models import MODELS, UnknownLayerError, build_model, model_params
from xaiflow.models.base import MicrographModel
from xaiflow.sources.base import ImageSource


def _close(ours: Tensor | np.ndarray, ref: Tensor | np.ndarray, rtol: float, what: str) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale, diff = float(np.abs(ref).max()), float(np.abs(ours - ref).max())
    assert diff <= rtol * max(scale, 1e-12), f"{what}: max difference {diff:.3g}, max |value| {scale:.3g}"


def _refuses_unknown_parameter(make: Any, family: str, name: str, valid: list[str]) -> None:
    try:
        make(no_such_param=1)
    except XaiflowError as e:
        message = str(e)
    else:
        raise AssertionError(f"{family} {name!r} accepted an unknown parameter")
    assert name in message and "no_such_param" in message, f"{name}: the error does not name the parameter: {message}"
    assert all(v in message for v in valid), f"{name}: the error does not list the valid parameters: {message}"


# ---------------------------------------------------------------- attribution methods

def check_method(name: str, model: MicrographModel, x: Tensor, target: Tensor, **params: Any) -> Tensor:
    """The :class:`~xaiflow.attribution.base.AttributionMethod` contract of method ``name`` on ``model``
    (in eval mode) for a batch ``x`` ``(B, C, H, W)`` of at least two images; returns the maps.

    Maps ``(B, H, W)`` float32, contiguous, detached, on ``x``'s device, finite, not all zero;
    deterministic, and the global RNGs untouched; a map independent of the rest of its batch;
    the batching parameter changes speed, not maps; rebuilt from ``get_params()`` it gives the
    same maps; an unknown parameter is an error naming it and listing the valid ones; the
    identity leaves the batching parameter out; provenance records every parameter; the
    method states its cost per image.
    """
    cls = METHODS.get(name)
    params = {**cls.quick_params, **params}
    method = make_method(name, model, **params)
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    maps = method.attribute(x, target)
    assert maps.shape == (x.shape[0], *x.shape[2:]), f"{name}: maps {tuple(maps.shape)} for input {tuple(x.shape)}"
    assert maps.dtype == torch.float32 and maps.is_contiguous() and not maps.requires_grad, f"{name}: not a plain map"
    assert maps.device == x.device, f"{name}: maps on {maps.device}, input on {x.device}"
    assert torch.isfinite(maps).all(), f"{name}: non-finite values"
    assert maps.abs().max() > 0, f"{name}: every map is zero"
    assert torch.equal(torch.random.get_rng_state(), torch_state), f"{name}: changed the global torch RNG"
    assert np.random.get_state()[1].tolist() == np_state[1].tolist(), f"{name}: changed the global numpy RNG"
    assert torch.equal(method.attribute(x, target), maps), f"{name}: not deterministic"
    _close(method.attribute(x[1:2], target[1:2])[0], maps[1], 1e-3, f"{name}: a map depends on its batch")

    if cls.batch_param:
        batching = cls.batching(len(x), 2)
        assert set(batching) == {cls.batch_param} and all(v >= 1 for v in batching.values()), \
            f"{name}: batching() gave {batching} for its batch_param {cls.batch_param!r}"
        batched = make_method(name, model, **{**params, **batching}).attribute(x, target)
        _close(batched, maps, 1e-3, f"{name}: the batching parameter changed the maps")
        assert cls.batch_param not in method.identity_params(), f"{name}: batching is part of the identity"
    else:
        assert cls.batching(len(x), 2) == {}, f"{name}: batching() without a batch_param"
    rebuilt = type(method)(model, **method.get_params())
    _close(rebuilt.attribute(x, target), maps, 1e-5, f"{name}: rebuilt from get_params() it differs")
    cost = method.cost(tuple(x.shape[1:]))
    assert cost.evaluations >= 1 and cost.kind, f"{name}: cost {cost}"
    assert method.evals_per_pass(len(x)) >= 1, f"{name}: evals_per_pass < 1"
    record = method.provenance()
    assert record["method"] == name and set(record["params"]) == set(cls.Params.model_fields), \
        f"{name}: provenance {record}"
    assert all(f.description for f in cls.Params.model_fields.values()), f"{name}: document every parameter"
    _refuses_unknown_parameter(lambda **p: make_method(name, model, **p), "attribution method", name,
                               list(cls.Params.model_fields))
    return maps


# ---------------------------------------------------------------- metrics

def check_metric(name: str, maps: np.ndarray, x: Tensor, targets: np.ndarray, *, model: MicrographModel,
                 masks: np.ndarray, method: Any, index: np.ndarray | None = None,
                 **params: Any) -> dict[str, np.ndarray]:
    """The :class:`~xaiflow.metrics.base.Metric` contract of metric ``name`` on a batch of at least
    three maps (with everything any metric may need); returns its outputs.

    Every parameter documented and defaulted, a citation; outputs declared before computing,
    named after the metric, the first a scalar headline with a direction; shapes as declared,
    float32, finite, deterministic; each value depends on its own map only (a sub-batch gives
    the same values); an unknown parameter is an error naming it; the identity leaves the
    batching parameter out; missing inputs the metric needs are refused.
    """
    cls = METRICS.get(name)
    params = {**cls.quick_params, **params}
    metric = make_metric(name, **params)
    index = np.arange(len(maps)) if index is None else index
    assert all(f.description for f in cls.Params.model_fields.values()), f"{name}: document every parameter"
    assert cls.citation, f"{name}: no citation"
    outputs = metric.outputs(model)
    assert outputs and all(n.startswith(name) for n in outputs), f"{name}: outputs {list(outputs)}"
    first = next(iter(outputs.values()))
    assert first.dim is None and first.higher_is_better is not None, f"{name}: the first output is not a headline"
    assert all(o.description for o in outputs.values()), f"{name}: an output without a description"

    def run(sel: slice) -> dict[str, np.ndarray]:
        return metric.compute(maps[sel], x[sel], targets[sel], index=index[sel], model=model, masks=masks[sel],
                              method=method)

    out = run(slice(None))
    assert set(out) == set(outputs), f"{name}: returned {sorted(out)}, declared {sorted(outputs)}"
    for key, spec in outputs.items():
        shape = (len(maps),) if spec.dim is None else (len(maps), len(spec.coords))
        assert out[key].shape == shape and out[key].dtype == np.float32, f"{name}: {key} {out[key].shape}"
        assert np.isfinite(out[key]).all(), f"{name}: {key} not finite"
    again, part = run(slice(None)), run(slice(1, None))
    for key in out:
        np.testing.assert_array_equal(again[key], out[key], err_msg=f"{name}: {key} not deterministic")
        np.testing.assert_allclose(part[key], out[key][1:], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: {key} depends on other maps of the batch")
    identity = metric.identity()
    assert identity["metric"] == name and (cls.batch_param is None or cls.batch_param not in identity["params"]), \
        f"{name}: identity {identity}"
    _refuses_unknown_parameter(lambda **p: make_metric(name, **p), "metric", name, list(cls.Params.model_fields))
    if cls.needs_model or cls.needs_mask or cls.needs_method:
        try:
            metric.compute(maps)
        except ValueError as e:
            assert "needs" in str(e), f"{name}: unclear error for missing inputs: {e}"
        else:
            raise AssertionError(f"{name}: scored maps without the inputs it needs")
    return out


# ---------------------------------------------------------------- feature extractors

def check_extractor(extractor: FeatureExtractor, images: np.ndarray, chunk: int = 2, atol: float = 1e-5) -> np.ndarray:
    """The :mod:`xaiflow.features.base` contract on ``images`` (N, H, W); returns the features.

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


# ---------------------------------------------------------------- image sources

def check_source(source: ImageSource, n_read: int = 3) -> list[Any]:
    """The :mod:`xaiflow.sources.base` contract; returns the listed samples.

    Unique ids in a deterministic order; the same pixels after pickling (as shipped to a Dask
    worker); 2-D uint8/uint16/float32 images, a tile's shape equal to its window; masks of
    the image's shape with values below the number of mask classes, or None without masks (or,
    where :meth:`~xaiflow.sources.base.ImageSource.has_mask` says so, for an image not annotated);
    a ``Config`` that validates the source's own config.
    """
    refs = source.list_samples()
    kind = source.kind
    assert refs and len({r.id for r in refs}) == len(refs), f"{kind}: no samples, or ids not unique"
    assert [r.id for r in source.list_samples()] == [r.id for r in refs], f"{kind}: listing order is not stable"
    assert type(source).Config.model_validate(source.config.model_dump()) == source.config, \
        f"{kind}: Config does not round-trip the source's config"
    clone = pickle.loads(pickle.dumps(source))
    for ref in refs[:n_read]:
        img = source.read(ref)
        assert img.ndim == 2 and img.dtype in (np.uint8, np.uint16, np.float32), f"{kind}: {ref.id} {img.shape}"
        np.testing.assert_array_equal(clone.read(ref), img, err_msg=f"{kind}: {ref.id} differs after pickling")
        if ref.window is not None:
            assert img.shape == (ref.window.h, ref.window.w), f"{kind}: {ref.id} is not its window's shape"
        mask = source.read_mask(ref)
        if source.mask_classes is None:
            assert mask is None, f"{kind}: a mask without mask classes"
        elif not source.has_mask(ref):
            assert mask is None, f"{kind}: {ref.id} has a mask but has_mask() says it has none"
        else:
            assert mask.shape == img.shape and mask.dtype == np.uint8 and mask.max() < len(source.mask_classes), \
                f"{kind}: bad mask for {ref.id}"
    return refs


# ---------------------------------------------------------------- model architectures

def _activations(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    acts: dict[str, Tensor] = {}
    handles = [model.get_layer(n).register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out))
               for n in model.layer_names()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return acts


def check_model(arch: str, num_classes: int = 3, **hparams: Any) -> MicrographModel:
    """The :class:`~xaiflow.models.base.MicrographModel` contract of architecture ``arch`` (with its
    ``quick_hparams``); returns a built model.

    Logits ``(B, num_classes)`` for 1- and 3-channel input and finite gradients; named layers
    unique, in forward order, the CAM layer among them, batched ``(B, C, h, w)`` activations
    (the head gives logits) with a spatial CAM map at 64 px; an unknown layer lists the valid
    ones; seeded construction is deterministic; hyperparameters survive JSON and rebuild the
    same architecture; dropout varies outputs in train mode only (MC dropout).
    """
    hparams = {**MODELS.get(arch).quick_hparams, **hparams}

    def make(**extra: Any) -> MicrographModel:
        return build_model(arch, num_classes, **{**hparams, **extra})

    model = make()
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, num_classes) and logits.dtype == torch.float32, f"{arch}: logits {logits.shape}"
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), f"{arch}: missing gradients"
    assert make(in_channels=3).eval()(torch.rand(1, 3, 32, 32)).shape == (1, num_classes), f"{arch}: 3 channels"

    model.eval()
    names = model.layer_names()
    assert names and len(set(names)) == len(names) and model.cam_layer in names, f"{arch}: layers {names}"
    acts = _activations(model, torch.rand(2, 1, 64, 64))
    assert list(acts) == names, f"{arch}: layers reached in order {list(acts)}, declared {names}"
    *inner, head = names
    assert all(acts[n].ndim == 4 and acts[n].shape[0] == 2 for n in inner), f"{arch}: activations not (B, C, h, w)"
    assert acts[head].shape == (2, num_classes) and acts[model.cam_layer].shape[-1] >= 2, f"{arch}: head or CAM layer"
    try:
        model.get_layer("no_such_layer")
    except UnknownLayerError as e:
        assert all(n in str(e) for n in names), f"{arch}: the layer error does not list the layers"
    else:
        raise AssertionError(f"{arch}: an unknown layer name was accepted")

    torch.manual_seed(7)
    a = make().state_dict()
    torch.manual_seed(7)
    b = make().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{arch}: seeded construction differs"
    rebuilt = type(model).from_hparams(json.loads(json.dumps(model.hparams)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in a.items()}, \
        f"{arch}: hparams from JSON rebuild another architecture"
    if "dropout" in model_params(arch):
        mc = make(dropout=0.5)
        mc.eval()
        assert torch.equal(mc(x), mc(x)), f"{arch}: eval mode is not deterministic"
        mc.train()
        assert not torch.equal(mc(x), mc(x)), f"{arch}: dropout does not vary train-mode outputs"
    return model
