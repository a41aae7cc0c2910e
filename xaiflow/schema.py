"""Names of the workspace's groups, dimensions, coordinates and attributes, and checks.

Everything that reads or writes the workspace takes its names from here, so the store
layout is defined in one place (see DESIGN.md, "The workspace"). The ``validate_*``
functions check an opened group against this schema and raise :class:`SchemaError`
naming the group, the variable and the problem.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xaiflow.errors import XaiflowError

SCHEMA_VERSION = 1

# groups: <group>/<dataset>[/<model or extractor>]
IMAGES = "images"
MASKS = "masks"
FEATURES = "features"
PREDICTIONS = "predictions"
SALIENCY = "saliency"
METRICS = "metrics"
STUDIES = "studies"

# dimensions
SAMPLE = "sample"
Y = "y"
X = "x"

# variables
IMAGE = "image"
MASK = "mask"
#: masks group coordinate (sample,) bool: the sample has an annotation (masks may cover a subset of
#: the images; the mask of a sample without one is all 0 and must not be scored)
HAS_MASK = "has_mask"
#: per-sample completion flags of a group's output (see :mod:`xaiflow.jobs`)
DONE = "done"
#: per-chunk flags (dimension ``chunk``) of groups written before per-sample flags; read and converted
LEGACY_CHUNK_DONE = "chunk_done"

# per-sample coordinates every image dataset carries
LABEL = "label"
LABEL_INDEX = "label_index"
GROUP = "group"
SOURCE = "source"
SPLIT = "split"
UM_PER_PX = "um_per_px"
# geometry: the window (in source pixels) the sample was cut from, so maps can be put back
TILE_Y0 = "tile_y0"
TILE_X0 = "tile_x0"
TILE_H = "tile_h"
TILE_W = "tile_w"
SAMPLE_COORDS = (LABEL, LABEL_INDEX, GROUP, SOURCE, SPLIT, UM_PER_PX, TILE_Y0, TILE_X0, TILE_H, TILE_W)

SPLITS = ("train", "val", "test")

# the stored form of a group (see xaiflow.store.for_disk): ``sample`` is the position 0..N-1 on disk and
# the string ids are this coordinate, so plain xarray selects ``sel(sample=2)``; xaiflow's readers give
# back the string ``sample`` index
SAMPLE_ID = "sample_id"
#: physical pixel positions (sample, y) / (sample, x) in micrometres, written where ``um_per_px`` is known
Y_UM = "y_um"
X_UM = "x_um"

#: CF-style ``(long_name, units)`` of every variable and coordinate the store writes, applied in one place
#: (:func:`cf_attrs`, called by ``store.for_disk``); units are UDUNITS spellings, "1" for dimensionless
#: numbers, None where the values are text or categories (no units attribute). A writer's own attrs win.
CF_ATTRS: dict[str, tuple[str, str | None]] = {
    SAMPLE: ("sample number (position in the dataset)", None),
    SAMPLE_ID: ("sample id", None),
    Y: ("pixel row (0 = top: plot with yincrease=False)", "1"),
    X: ("pixel column (0 = left)", "1"),
    Y_UM: ("row position (row 0 at 0)", "um"),
    X_UM: ("column position (column 0 at 0)", "um"),
    IMAGE: ("micrograph intensity", "1"),
    MASK: ("expert region label (0 = background; names in the mask_classes attribute)", None),
    HAS_MASK: ("the sample has an expert mask", None),
    DONE: ("sample written completely", None),
    LABEL: ("class", None),
    LABEL_INDEX: ("class index (position in the classes attribute)", None),
    GROUP: ("specimen (samples of one specimen share a split)", None),
    SOURCE: ("source file or URI", None),
    SPLIT: ("data split (train, val, test)", None),
    UM_PER_PX: ("pixel size in micrometres per pixel (NaN: unknown)", "um"),
    TILE_Y0: ("top row of the window in the source image", "1"),
    TILE_X0: ("left column of the window in the source image", "1"),
    TILE_H: ("window height in source pixels", "1"),
    TILE_W: ("window width in source pixels", "1"),
    "source_um_per_px": ("pixel size of the source image in micrometres per pixel (NaN: unknown)", "um"),
    "magnification": ("magnification", "1"),
    "detector": ("detector", None),
    "condition": ("acquisition condition", None),
    "has_shortcut": ("the planted shortcut marker sits in its class's corner (1) or not (0)", "1"),
    "shortcut_position": ("corner of the planted shortcut marker (none: no marker)", None),
    "logits": ("class logits of the model", "1"),
    "probabilities": ("class probabilities (softmax of the logits)", "1"),
    "predicted": ("predicted class index (position in the classes attribute)", None),
    "class": ("class", None),
    "features": ("feature value", "1"),
    "feature": ("feature", None),
    "family": ("feature family", None),
    "value": ("metric value (the outputs attribute describes each metric)", "1"),
    "metric": ("metric", None),
    "xai_method": ("attribution method", None),
    "annotator": ("annotator", None),
    # inspections (uncertainty, concepts, probes, importance, adversarial)
    "selected": ("sample inspected (the others hold NaN)", None),
    "correct": ("predicted class (argmax of mean_probability) equals the label", None),
    "mean_probability": ("class probabilities averaged over the draws", "1"),
    "member": ("ensemble member (model id) of the draw", None),
    "pass_index": ("stochastic forward pass of the draw within its member", "1"),
    "concept": ("concept", None),
    "layer": ("network layer", None),
    "run": ("training run of the CAV (another random set each)", "1"),
    "score": ("share of the class's images whose target logit rises along the concept's CAV (TCAV score)", "1"),
    "random_score": ("score along a CAV of one random set against another (the TCAV null)", "1"),
    "mean_score": ("score, mean over runs (TCAV)", "1"),
    "cav_accuracy": ("held-out accuracy of the linear classifier that defines the CAV", "1"),
    "p_value": ("two-sided t-test p-value of the scores against the random scores", "1"),
    "p_adjusted": ("p_value adjusted for the number of tests (Holm)", "1"),
    "significant": ("p_adjusted below the study's alpha", None),
    "transform": ("input transform of the probe", None),
    "transformed_predicted": ("predicted class index of the transformed image", None),
    "probability_change": ("probability of the original prediction after the transform, minus before", "1"),
    "mask_class": ("structure (mask class) removed or kept", None),
    "input": ("input kind: clean image or an adversarial attack of it", None),
    "confidence": ("largest class probability", "1"),
    "flipped": ("the predicted class differs from the clean image's", None),
    "fis_map": ("sensitivity per pixel from the Fisher information", "1"),
    # studies (feature classification, feature reduction)
    "feature_set": ("feature set", None),
    "classifier": ("classifier", None),
    "fold": ("cross-validation fold (grouped by specimen)", "1"),
    "n_features": ("number of features in the set", "1"),
    "balanced_accuracy": ("balanced accuracy on the held-out fold", "1"),
    "pooled_balanced_accuracy": ("balanced accuracy of the predictions of every fold pooled", "1"),
    "mean": ("balanced accuracy, mean over folds", "1"),
    "std": ("balanced accuracy, standard deviation over folds", "1"),
    "confusion": ("confusion counts over every fold", "1"),
    "true_class": ("true class", None),
    "predicted_class": ("predicted class", None),
    "reduction": ("feature reduction method", None),
    "k": ("number of features kept", "1"),
    "full_accuracy": ("balanced accuracy with every feature, per fold", "1"),
    "full_mean": ("balanced accuracy with every feature, mean over folds", "1"),
    "full_std": ("balanced accuracy with every feature, standard deviation over folds", "1"),
    "k_target": ("fewest features kept reaching the target share of the full accuracy (NaN: never)", "1"),
    "survivor_feature_set": ("feature set of the kept feature", None),
    "survivor_reduction": ("reduction method that kept the feature", None),
    "survivor_rank": ("rank of the kept feature (0: first)", "1"),
    "survivor_label": ("kept feature", None),
    "survivor_family": ("feature family of the kept feature", None),
    "survivor_weight": ("weight of the kept feature in its reduction", "1"),
    "share_feature_set": ("feature set of the family share", None),
    "share_reduction": ("reduction method of the family share", None),
    "share_family": ("feature family", None),
    "family_share": ("share of the kept features from the family", "1"),
}

#: long names of a metric's stored curves, by suffix (``<metric>_curve``, ``road_random_morf_curve``,
#: ``<metric>_fraction``): the names carry the metric, so one rule per suffix
CF_SUFFIXES = {
    "_random_curve": "model output along random orders as the perturbed fraction grows",
    "_random_morf_curve": "model output along random orders (most relevant first) as the imputed fraction grows",
    "_random_lerf_curve": "model output along random orders (least relevant first) as the imputed fraction grows",
    "_morf_curve": "model output as the most relevant pixels are imputed first",
    "_lerf_curve": "model output as the least relevant pixels are imputed first",
    "_curve": "model output as the perturbed fraction grows",
    "_fraction": "fraction of the image perturbed",
}


def cf_attrs(name: str) -> dict[str, str]:
    """The ``long_name`` (and ``units``) of the variable ``name`` from :data:`CF_ATTRS`, or of a metric's
    curve from :data:`CF_SUFFIXES` (first matching suffix); empty if unknown."""
    if name not in CF_ATTRS:
        suffix = next((x for x in CF_SUFFIXES if name.endswith(x) and len(name) > len(x)), None)
        if suffix is None:
            return {}
        return {"long_name": f"{name[:-len(suffix)]}: {CF_SUFFIXES[suffix]}", "units": "1"}
    long_name, units = CF_ATTRS[name]
    return {"long_name": long_name, **({"units": units} if units is not None else {})}

# attributes
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CLASSES = "classes"
ATTR_MASK_CLASSES = "mask_classes"
ATTR_PROVENANCE = "provenance"
ATTR_STATUS = "status"
ATTR_SKIPPED = "skipped"
STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"

IMAGE_DTYPES = (np.uint8, np.uint16, np.float32)


class SchemaError(XaiflowError):
    """A workspace group does not match the schema; names the group, variable and problem."""

    def __init__(self, group: str, variable: str | None, problem: str) -> None:
        self.group, self.variable, self.problem = group, variable, problem
        where = f"{group}" + (f" variable {variable!r}" if variable else "")
        super().__init__(f"{where}: {problem}")


def group_path(kind: str, dataset: str, *rest: str) -> str:
    """Path of a group inside the workspace, e.g. ``group_path(IMAGES, "uhcs")``."""
    for part in (dataset, *rest):
        if not part or "/" in part or part.startswith("."):
            raise ValueError(f"invalid name {part!r} for a workspace group (no '/', not empty)")
    return "/".join((kind, dataset, *rest))


def _require(ds: xr.Dataset, group: str, name: str, dims: tuple[str, ...]) -> xr.DataArray:
    if name not in ds.variables:
        raise SchemaError(group, name, "is missing")
    var = ds[name]
    if var.dims != dims:
        raise SchemaError(group, name, f"has dims {var.dims}, expected {dims}")
    return var


def _check_status(ds: xr.Dataset, group: str) -> None:
    status = ds.attrs.get(ATTR_STATUS)
    if status != STATUS_COMPLETE:
        raise SchemaError(
            group, None,
            f"is not complete (status={status!r}): a write failed or is still running; "
            "re-run the command that writes it (with --overwrite if its config changed)",
        )


def validate_images(ds: xr.Dataset, group: str = IMAGES) -> None:
    """Check an ``images/<dataset>`` group: image variable, per-sample coords, attrs."""
    image = _require(ds, group, IMAGE, (SAMPLE, Y, X))
    if not any(image.dtype == d for d in IMAGE_DTYPES):
        raise SchemaError(group, IMAGE, f"has dtype {image.dtype}, expected one of uint8, uint16, float32")
    for name in SAMPLE_COORDS:
        _require(ds, group, name, (SAMPLE,))
    ids = ds[SAMPLE].values
    if len(np.unique(ids)) != len(ids):
        raise SchemaError(group, SAMPLE, "sample ids are not unique")
    classes = ds.attrs.get(ATTR_CLASSES)
    if not classes:
        raise SchemaError(group, None, f"attribute {ATTR_CLASSES!r} is missing or empty")
    idx = ds[LABEL_INDEX].values
    if idx.size and (idx.min() < 0 or idx.max() >= len(classes)):
        raise SchemaError(group, LABEL_INDEX, f"values outside 0..{len(classes) - 1}")
    bad = sorted(set(ds[SPLIT].values.tolist()) - set(SPLITS))
    if bad:
        raise SchemaError(group, SPLIT, f"unknown split names {bad}; expected {list(SPLITS)}")
    if ds.attrs.get(ATTR_SCHEMA_VERSION) != SCHEMA_VERSION:
        raise SchemaError(group, None, f"schema_version {ds.attrs.get(ATTR_SCHEMA_VERSION)!r} != {SCHEMA_VERSION}")
    if ATTR_PROVENANCE not in ds.attrs:
        raise SchemaError(group, None, f"attribute {ATTR_PROVENANCE!r} is missing")
    _check_status(ds, group)
    check_specimen_split(ds, group)


def check_specimen_split(ds: xr.Dataset, group: str = IMAGES) -> None:
    """No specimen (group coord) may appear in two splits: that would leak near-duplicates."""
    pairs = {(g, s) for g, s in zip(ds[GROUP].values.tolist(), ds[SPLIT].values.tolist())}
    seen: dict[str, str] = {}
    for g, s in sorted(pairs):
        if g in seen and seen[g] != s:
            raise SchemaError(group, SPLIT, f"specimen {g!r} is in two splits ({seen[g]!r} and {s!r})")
        seen[g] = s


def validate_masks(masks: xr.Dataset, images: xr.Dataset, group: str = MASKS) -> None:
    """Check a ``masks/<dataset>`` group against its images: same samples and shape, and the
    ``has_mask`` flags (samples without a mask are allowed: readers skip them, see :mod:`xaiflow.maskspec`)."""
    mask = _require(masks, group, MASK, (SAMPLE, Y, X))
    if mask.dtype != np.uint8:
        raise SchemaError(group, MASK, f"has dtype {mask.dtype}, expected uint8")
    if masks.sizes[Y] != images.sizes[Y] or masks.sizes[X] != images.sizes[X]:
        raise SchemaError(
            group, MASK,
            f"shape {masks.sizes[Y]}x{masks.sizes[X]} differs from the images' {images.sizes[Y]}x{images.sizes[X]}",
        )
    mids, iids = masks[SAMPLE].values, images[SAMPLE].values
    if len(mids) != len(iids) or not np.array_equal(mids, iids):
        missing = sorted(set(iids.tolist()) - set(mids.tolist()))[:5]
        raise SchemaError(group, SAMPLE, f"sample ids differ from the images' (e.g. missing {missing})")
    if not masks.attrs.get(ATTR_MASK_CLASSES):
        raise SchemaError(group, None, f"attribute {ATTR_MASK_CLASSES!r} is missing or empty")
    if HAS_MASK in masks.variables:  # absent in groups written before masks could cover a subset: all have one
        flags = _require(masks, group, HAS_MASK, (SAMPLE,))
        if flags.dtype != bool:
            raise SchemaError(group, HAS_MASK, f"has dtype {flags.dtype}, expected bool")
    _check_status(masks, group)
