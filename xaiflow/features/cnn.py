"""CNN activations of named layers, pooled to fixed-length vectors (Ling et al. 2017).

Ling et al. (2017) showed that the activations of an ImageNet-trained VGG16, pooled over
the image, describe microstructure well enough for a random forest to classify it and to
generalize across acquisition settings; DeCost et al. (2017) used the same idea on the
UHCS micrographs. This extractor takes the activation maps ``(C, h, w)`` of one or more
named layers (``model.get_layer(name)``, read with forward hooks) and pools each of them:

* ``mean``: average over positions (C features), the "mean pooling" of Ling et al.;
* ``max``: maximum over positions (C features);
* ``gram``: the Gram matrix ``G = F F^T / (h w)`` of the channel responses (Gatys et al.
  2015 style statistics, used by Ling et al.), upper triangle with the diagonal,
  ``C (C + 1) / 2`` features; with ``gram_channels=k`` it is reduced to ``W^T G W`` where W
  holds the top-k eigenvectors of the mean Gram over the fit images (a label-free channel
  PCA learned by :meth:`fit`), ``k (k + 1) / 2`` features.

The network is either a model trained in the workspace (``model``: a model id, or unique id
prefix, of the workspace's :class:`~xaiflow.models.catalog.ModelCatalog`, or a checkpoint
directory; by default the ``features.model`` of the run) or a torchvision ``backbone`` with
weights from a local file (``weights_path``; never downloaded). Images go through
:func:`xaiflow.preprocess.to_input`, exactly as in training. A Dask worker loads the model
once (:meth:`xaiflow.models.catalog.ModelEntry.cached`) and keeps it for every chunk.

torch is imported inside the methods: importing the extractor registry (which configs do to
validate names) stays cheap.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from xaiflow import store
from xaiflow.features.base import (
    FEATURES,
    FeatureError,
    FeatureExtractor,
    FeatureParams,
)

POOLINGS = ("mean", "max", "gram")


@lru_cache(maxsize=2)
def _backbone(name: str, weights_path: str | None, device: str) -> Any:
    """A torchvision backbone with local weights, built once per process (a worker keeps the last two)."""
    from xaiflow.models import build_model

    return build_model("backbone", num_classes=1, name=name, weights_path=weights_path).to(device).eval()


class CNNParams(FeatureParams):
    model: str | None = Field(None, description="model id (or unique prefix) in the workspace, or a checkpoint "
                                                "directory (default: the run's features.model)")
    backbone: str | None = Field(None, description="torchvision network name (instead of model), e.g. vgg16")
    weights_path: str | None = Field(None, description="local ImageNet weights file for backbone (a state_dict)")
    layers: list[str] | None = Field(None, description="layer names (default: the model's last convolutional "
                                                       "stage, its cam_layer)")
    pooling: list[Literal["mean", "max", "gram"]] = Field(["mean", "max"], min_length=1,
                                                          description="poolings of each layer's activations")
    gram_channels: PositiveInt | None = Field(None, description="reduce the Gram matrix to this many principal "
                                                                "channel directions")
    batch_size: PositiveInt = Field(32, description="images per forward pass (runtime only)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto (runtime only)")
    models_dir: str | None = Field(None, description="the workspace's models folder (set by the run; runtime only)")

    @model_validator(mode="after")
    def _one_network(self) -> "CNNParams":
        if (self.model is None) == (self.backbone is None):
            raise ValueError("give exactly one of model (a trained model id or checkpoint directory) and backbone "
                             "(a torchvision name with weights_path)")
        return self


@FEATURES.register("cnn")
class CNNActivations(FeatureExtractor):
    """Pooled activations of named layers of a CNN (see the module docstring and :class:`CNNParams`)."""

    name = "cnn"
    citation = ("Ling, Hutchinson, Antono, DeCost, Holm, Meredig 2017, Building data-driven models with "
                "microstructural images: generalization and interpretability, Materials Discovery 10:19 "
                "(doi:10.1016/j.md.2018.03.002)")
    runtime_params = frozenset({"batch_size", "device", "models_dir"})
    Params = CNNParams
    params: CNNParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        self.pooling = list(dict.fromkeys(p.pooling))
        self.gram_channels = p.gram_channels if "gram" in self.pooling else None
        self.batch_size = p.batch_size
        self._net: Any = None
        self._projections: dict[str, np.ndarray] = {}
        net = self._model()
        self.layers = list(p.layers) if p.layers else [net.cam_layer]
        for layer in self.layers:
            net.get_layer(layer)  # UnknownLayerError lists the valid layers
        self._channels = self._count_channels()
        if self.gram_channels is not None:
            too_big = {l: c for l, c in self._channels.items() if self.gram_channels > c}
            if too_big:
                raise FeatureError(f"cnn: gram_channels={self.gram_channels} exceeds the channels of {too_big}")

    # -------------------------------------------------------------- the network

    @property
    def requires_fit(self) -> bool:  # type: ignore[override]
        return self.gram_channels is not None

    @classmethod
    def bind(cls, params: dict[str, Any], workspace: str, default_model: Callable[[], str | None]) -> dict[str, Any]:
        """The run's default model when neither ``model`` nor ``backbone`` is given; a model id (or
        unique prefix) completed from the workspace's catalog, whose folder becomes ``models_dir``."""
        from xaiflow.models.catalog import ModelCatalog, ModelNotFoundError
        from xaiflow.models.checkpoint import MANIFEST

        params = dict(params)
        if params.get("model") is None and params.get("backbone") is None:
            if default_model() is None:
                raise FeatureError("cnn extractor needs params.model (a model id), params.backbone, or the "
                                   "features section's `model:` (e.g. {train: this})")
            params["model"] = default_model()
        model = params.get("model")
        if model is not None and not (Path(str(model)) / MANIFEST).is_file():
            catalog = ModelCatalog(workspace)
            try:
                params["model"] = catalog.get(str(model)).model_id
            except ModelNotFoundError as e:
                raise FeatureError(f"cnn: {e}") from None
            if params.get("models_dir") is None:  # a workspace on object storage: its models URL (each host mirrors it)
                params["models_dir"] = catalog.remote or str(catalog.directory)
        return params

    def _checkpoint(self) -> Path:
        """The checkpoint directory of ``model``: ``models_dir/<model>`` (a workspace's model id), else
        ``model`` itself (a checkpoint directory)."""
        from xaiflow.models.checkpoint import MANIFEST

        model = str(self.params.model)
        models_dir = self.params.models_dir
        if models_dir and store.is_url(models_dir):
            from xaiflow.models.remote import pull, remote_ids

            models_dir = str(pull(models_dir, [model] if model in remote_ids(models_dir) else []))
        for candidate in ([Path(models_dir, model)] if models_dir else []) + [Path(model)]:
            if (candidate / MANIFEST).is_file():
                return candidate
        raise FeatureError(f"cnn: no checkpoint {model!r} in {self.params.models_dir or '(no models folder)'} and no "
                           f"checkpoint directory at {model}")

    def _model(self) -> Any:
        if self._net is not None:
            return self._net
        from xaiflow.device import resolve_device

        device = resolve_device(self.params.device)
        if self.params.model is not None:
            from xaiflow.models.cache import cached_model

            self._net = cached_model(self._checkpoint(), device)[0]
        else:
            self._net = _backbone(str(self.params.backbone), self.params.weights_path, str(device))
        return self._net

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_net"] = None  # workers load (and cache) the model themselves
        return state

    def provenance(self) -> dict[str, Any]:
        if self.params.model is not None:
            from xaiflow.models.checkpoint import verify_checkpoint

            directory = self._checkpoint()
            manifest = verify_checkpoint(directory)
            return {"model_id": directory.name, "arch": manifest.arch, "checkpoint_sha256": manifest.weights_sha256}
        weights = self.params.weights_path
        sha = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if weights else None
        return {"backbone": self.params.backbone, "weights_sha256": sha}

    def configure_threads(self, n: int) -> None:
        from xaiflow.device import set_torch_threads

        set_torch_threads(n)

    def _activations(self, images: np.ndarray) -> dict[str, Any]:
        """Activations ``(B, C, h, w)`` of every requested layer for one batch (forward hooks)."""
        import torch

        from xaiflow.preprocess import to_input

        net = self._model()
        acts: dict[str, Any] = {}
        handles = [net.get_layer(name).register_forward_hook(
            lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach())) for name in self.layers]
        try:
            with torch.inference_mode():
                net(to_input(images).to(next(net.parameters()).device))
        finally:
            for h in handles:
                h.remove()
        return {k: (v if v.ndim == 4 else v.reshape(*v.shape, *([1] * (4 - v.ndim)))).float().cpu()
                for k, v in acts.items()}

    def _count_channels(self) -> dict[str, int]:
        acts = self._activations(np.zeros((1, 64, 64), np.float32))
        return {name: int(acts[name].shape[1]) for name in self.layers}

    # -------------------------------------------------------------- features

    def _gram_size(self, layer: str) -> int:
        return self.gram_channels or self._channels[layer]

    def feature_labels(self) -> list[str]:
        labels = []
        for layer in self.layers:
            c = self._channels[layer]
            for pool in self.pooling:
                if pool == "gram":
                    k = self._gram_size(layer)
                    tag = "pc" if self.gram_channels else "c"
                    labels += [f"{layer}/gram/{tag}{i}-{tag}{j}" for i, j in zip(*np.triu_indices(k))]
                else:
                    labels += [f"{layer}/{pool}/c{i}" for i in range(c)]
        return labels

    def feature_families(self) -> list[str]:
        return [label.rsplit("/", 1)[0] for label in self.feature_labels()]

    def _fit(self, images: np.ndarray) -> None:
        sums = {layer: np.zeros((c, c)) for layer, c in self._channels.items()}
        for i in range(0, len(images), self.batch_size):
            for layer, a in self._activations(images[i:i + self.batch_size]).items():
                sums[layer] += _gram(a).sum(0).numpy()
        self._projections = {}
        for layer, total in sums.items():
            values, vectors = np.linalg.eigh(total / len(images))
            top = vectors[:, np.argsort(values)[::-1][:self.gram_channels]]
            signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
            self._projections[layer] = (top * np.where(signs == 0, 1, signs)).astype(np.float32)

    def compute(self, images: np.ndarray) -> np.ndarray:
        import torch

        rows = []
        for i in range(0, len(images), self.batch_size):
            acts = self._activations(images[i:i + self.batch_size])
            parts = []
            for layer in self.layers:
                a = acts[layer]
                for pool in self.pooling:
                    if pool == "mean":
                        parts.append(a.mean(dim=(2, 3)))
                    elif pool == "max":
                        parts.append(a.amax(dim=(2, 3)))
                    else:
                        g = _gram(a)
                        if self.gram_channels:
                            w = torch.from_numpy(self._projections[layer])
                            g = w.T @ g @ w
                        iu = torch.triu_indices(g.shape[1], g.shape[2])
                        parts.append(g[:, iu[0], iu[1]])
            rows.append(torch.cat(parts, dim=1).numpy())
        return np.concatenate(rows).astype(np.float64)


def _gram(a: Any) -> Any:
    """(B, C, h, w) activations -> (B, C, C) Gram matrices normalized by the number of positions."""
    f = a.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[2]
