"""Tests of the synthetic micrograph generator: ground truth, domain shift, shortcut, source.

All on real generated arrays with fixed seeds; the whole file runs in a few seconds.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from xaiflow.sources.base import SOURCES, SampleRef, SourceError
from xaiflow.sources.synthetic import (
    CLASSES,
    CORNERS,
    MASK_CLASSES,
    Condition,
    ShortcutSpec,
    SyntheticConfig,
    SyntheticSource,
    class_corner,
    corner_position,
    draw_specimen_params,
    generate_micrograph,
    marker_shape,
)

SIZE = (128, 128)


def _source(**overrides) -> SyntheticSource:
    params = {"specimens_per_class": 3, "images_per_specimen": 2, "size": SIZE} | overrides
    return SyntheticSource(SyntheticConfig(**params))


def _read_all(source: SyntheticSource) -> tuple[list[SampleRef], np.ndarray, np.ndarray]:
    refs = source.list_samples()
    images = np.stack([source.read(r) for r in refs])
    masks = np.stack([source.read_mask(r) for r in refs])
    return refs, images, masks


@pytest.fixture(scope="module")
def clean():
    """All classes, 3 specimens x 2 images, default (clean) condition."""
    return _read_all(_source())


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_in_any_order(clean):
    refs, images, masks = clean
    fresh = _source()  # a new instance, reading in reverse order: no hidden shared state
    for i in reversed(range(len(refs))):
        assert fresh.read(refs[i]).tobytes() == images[i].tobytes()
        assert fresh.read_mask(refs[i]).tobytes() == masks[i].tobytes()


def test_generate_micrograph_is_a_function_of_its_rng():
    first = generate_micrograph("needles", SIZE, np.random.default_rng(7))
    again = generate_micrograph("needles", SIZE, np.random.default_rng(7))
    other = generate_micrograph("needles", SIZE, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_different_seed_different_images(clean):
    refs, images, masks = clean
    other = _source(seed=1)
    for ref, image, mask in zip(refs, images, masks):
        assert not np.array_equal(other.read(ref), image)
        assert not np.array_equal(other.read_mask(ref), mask)


def test_samples_of_one_source_are_all_different(clean):
    _, images, _ = clean
    assert len({im.tobytes() for im in images}) == len(images)


# ----------------------------------------------------------------------------- ground truth


@pytest.mark.parametrize("class_name", CLASSES)
def test_mask_lines_up_with_bright_structures(clean, class_name):
    refs, images, masks = clean
    for ref, image, mask in zip(refs, images, masks):
        if ref.label != class_name:
            continue
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.shape == mask.shape == SIZE
        assert set(np.unique(mask)) == {0, 1}
        fraction = (mask == 1).mean()
        assert 0.03 <= fraction <= 0.6, f"{ref.id}: structure fraction {fraction:.3f}"
        inside, outside = image[mask == 1].mean(), image[mask == 0].mean()
        assert inside - outside > 40, f"{ref.id}: structure {inside:.0f} vs matrix {outside:.0f}"


def _spectral_features(image: np.ndarray, n_bins: int = 12) -> np.ndarray:
    """Log radial power spectrum, skewness and angular anisotropy of a normalised image."""
    x = image.astype(float)
    x = (x - x.mean()) / (x.std() + 1e-9)
    power = np.abs(np.fft.fft2(x)) ** 2
    ky, kx = np.fft.fftfreq(x.shape[0])[:, None], np.fft.fftfreq(x.shape[1])[None, :]
    k = np.hypot(ky, kx)
    bins = np.minimum((k / 0.5 * n_bins).astype(int), n_bins - 1).ravel()
    radial = np.bincount(bins, power.ravel(), n_bins) / np.bincount(bins, minlength=n_bins)
    band = (k > 0.05) & (k < 0.3)
    sector = (np.mod(np.arctan2(ky, kx), np.pi)[band] / np.pi * 8).astype(int) % 8
    angular = np.bincount(sector, power[band], 8)
    anisotropy = np.log(angular.max() / angular.min())
    return np.concatenate([np.log(radial[1:]), [(x**3).mean(), anisotropy]])


@pytest.mark.parametrize(
    "condition", [Condition(), Condition(noise_std=0.1, blur_sigma=1.0)], ids=["clean", "shifted"]
)
def test_classes_are_separable_from_pixels(condition):
    """A nearest-centroid classifier on spectral features, split by specimen, beats chance."""
    refs, images, _ = _read_all(_source(specimens_per_class=6, condition=condition))
    features = np.array([_spectral_features(im) for im in images])
    labels = np.array([r.label for r in refs])
    train = np.array([int(r.group.rsplit("-s", 1)[1]) < 3 for r in refs])
    mu, sd = features[train].mean(0), features[train].std(0)
    features = (features - mu) / sd
    centroids = np.stack([features[train & (labels == c)].mean(0) for c in CLASSES])
    distances = ((features[~train, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = np.array(CLASSES)[distances.argmin(1)]
    assert (predicted == labels[~train]).mean() >= 0.75  # chance: 0.25


def test_images_of_one_specimen_are_alike():
    """Structure fraction varies less within a specimen than between specimens."""
    refs, _, masks = _read_all(_source(specimens_per_class=6, images_per_specimen=3))
    fractions = (masks == 1).mean(axis=(1, 2))
    for class_name in CLASSES:
        per_specimen = fractions[[r.label == class_name for r in refs]].reshape(6, 3)
        within = per_specimen.std(axis=1).mean()
        between = per_specimen.mean(axis=1).std()
        assert within < between, class_name


@pytest.mark.parametrize("class_name", CLASSES)
def test_specimen_params_make_images_of_a_specimen(class_name):
    params = draw_specimen_params(class_name, np.random.default_rng(0))
    assert params and all(np.isfinite(v) for v in params.values())
    image, mask = generate_micrograph(
        class_name, (64, 96), np.random.default_rng(1), specimen_params=params
    )
    assert image.shape == mask.shape == (64, 96)
    assert (mask == 1).any()


# ----------------------------------------------------------------------------- domain shift


def _paired(condition: Condition) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of the same samples as ``clean``, under another condition."""
    _, images, masks = _read_all(_source(condition=condition))
    return images, masks


def _highpass_std(images: np.ndarray) -> float:
    x = images.astype(float)
    return float((x - ndimage.gaussian_filter(x, (0, 2, 2))).std())


def _gradient(images: np.ndarray) -> float:
    x = images.astype(float)
    return float(np.hypot(ndimage.sobel(x, 1), ndimage.sobel(x, 2)).mean())


def _structure_contrast(images: np.ndarray, masks: np.ndarray) -> float:
    return float(images[masks == 1].mean() - images[masks == 0].mean())


def test_conditions_without_scale_change_keep_structures(clean):
    """Noise, contrast, brightness and blur leave the masks alone: paired acquisitions."""
    _, images, masks = clean
    shifted_images, shifted_masks = _paired(
        Condition(noise_std=0.1, contrast=0.5, brightness=0.1, blur_sigma=1.5)
    )
    assert np.array_equal(shifted_masks, masks)
    assert not np.array_equal(shifted_images, images)


def test_noise_adds_fine_grained_variation(clean):
    _, images, _ = clean
    quiet, _ = _paired(Condition(noise_std=0.0))
    loud, _ = _paired(Condition(noise_std=0.15))
    assert _highpass_std(quiet) < _highpass_std(images) < _highpass_std(loud)


def test_blur_removes_edges(clean):
    _, images, _ = clean
    blurred, _ = _paired(Condition(blur_sigma=2.0))
    assert _gradient(blurred) < 0.7 * _gradient(images)


def test_contrast_scales_structure_contrast(clean):
    _, images, masks = clean
    low, _ = _paired(Condition(contrast=0.5))
    high, _ = _paired(Condition(contrast=1.5))
    assert (
        _structure_contrast(low, masks)
        < _structure_contrast(images, masks)
        < _structure_contrast(high, masks)
    )


def test_brightness_shifts_the_mean(clean):
    _, images, _ = clean
    brighter, _ = _paired(Condition(brightness=0.2))
    assert brighter.mean() - images.mean() > 30


@pytest.mark.parametrize("class_name", CLASSES)
def test_scale_makes_structures_larger(class_name):
    """Boundary pixels per structure pixel fall as structures grow (~1 / size)."""

    def edge_ratio(scale: float) -> float:
        _, _, masks = _read_all(_source(classes=[class_name], condition=Condition(scale=scale)))
        structure = masks == 1
        edges = structure & ~ndimage.binary_erosion(structure, structure=np.ones((1, 3, 3)))
        return edges.sum() / structure.sum()

    assert edge_ratio(2.0) < 0.8 * edge_ratio(0.5)


def test_scale_changes_the_reported_pixel_size():
    refs = _source(um_per_px=0.2, condition=Condition(scale=2.0)).list_samples()
    assert all(r.um_per_px == pytest.approx(0.1) for r in refs)


# ----------------------------------------------------------------------------- shortcut


def test_no_shortcut_no_marker(clean):
    refs, _, masks = clean
    assert not (masks == 2).any()
    assert {r.metadata["shortcut_position"] for r in refs} == {"none"}


def test_certain_shortcut_sits_at_the_class_corner():
    spec = ShortcutSpec(probability=1.0)
    refs, images, masks = _read_all(_source(shortcut=spec))
    h, w = marker_shape(SIZE, spec)
    corners = {}
    for ref, image, mask in zip(refs, images, masks):
        ys, xs = np.nonzero(mask == 2)
        corner = ref.metadata["shortcut_position"]
        corners.setdefault(ref.label, set()).add(corner)
        assert corner == class_corner(ref.label)
        assert len(ys) == h * w  # one solid rectangle ...
        assert (ys.min(), xs.min()) == corner_position(corner, SIZE, spec)  # ... at its corner
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (h, w)
        assert (ys.mean() < SIZE[0] / 2) == corner.startswith("top")
        assert (xs.mean() < SIZE[1] / 2) == corner.endswith("left")
        assert (image[mask == 2] == 255).all()  # intensity 1.0
    assert all(len(c) == 1 for c in corners.values())
    assert len(set.union(*corners.values())) == len(CLASSES)  # a perfect shortcut


def test_marker_mask_covers_exactly_the_changed_pixels(clean):
    """The shortcut only overlays the marker: elsewhere image and mask are the clean ones."""
    _, images, masks = clean
    _, marked, marked_masks = _read_all(_source(shortcut=ShortcutSpec(intensity=0.9)))
    marker = marked_masks == 2
    assert marker.any()
    assert np.array_equal(marked[~marker], images[~marker])
    assert np.array_equal(marked_masks[~marker], masks[~marker])
    assert (marked[marker] == round(0.9 * 255)).all()


def test_marker_scales_with_image_size():
    spec = ShortcutSpec(size=8)
    small = marker_shape((128, 128), spec)
    large = marker_shape((256, 384), spec)
    assert large == (2 * small[0], 2 * small[1])


def test_uncertain_shortcut_is_sometimes_elsewhere():
    source = _source(
        specimens_per_class=6, images_per_specimen=4, shortcut=ShortcutSpec(probability=0.5)
    )
    refs = source.list_samples()
    at_own = np.array([r.metadata["shortcut_position"] == class_corner(r.label) for r in refs])
    assert 0.3 < at_own.mean() < 0.7
    assert {r.metadata["shortcut_position"] for r in refs} <= set(CORNERS)
    for ref in refs[:: len(refs) // 8]:  # the metadata tells where the marker really is
        ys, xs = np.nonzero(source.read_mask(ref) == 2)
        corner = ref.metadata["shortcut_position"]
        assert (ys.mean() < SIZE[0] / 2) == corner.startswith("top")
        assert (xs.mean() < SIZE[1] / 2) == corner.endswith("left")


def test_misplaced_marker_goes_to_another_class_of_the_data_set():
    source = _source(classes=["particles", "network"], shortcut=ShortcutSpec(probability=0.0))
    for ref in source.list_samples():
        other = "network" if ref.label == "particles" else "particles"
        assert ref.metadata["shortcut_position"] == class_corner(other)


def test_generate_micrograph_places_a_marker_itself():
    _, mask = generate_micrograph(
        "lamellae", SIZE, np.random.default_rng(3), shortcut=ShortcutSpec(probability=1.0)
    )
    ys, xs = np.nonzero(mask == 2)
    assert (ys.min(), xs.min()) == corner_position(class_corner("lamellae"), SIZE, ShortcutSpec())


# ----------------------------------------------------------------------------- the source


def test_listing_ids_groups_and_metadata():
    source = _source(
        specimens_per_class=3, images_per_specimen=4, seed=5, condition_name="detector-B"
    )
    refs = source.list_samples()
    assert refs == source.list_samples()  # deterministic
    assert len(refs) == len({r.id for r in refs}) == len(CLASSES) * 3 * 4
    assert refs[0].id == "particles-s00-i00"
    assert all(r.uri == f"synthetic://seed=5/{r.id}" for r in refs)
    assert all(r.metadata["condition"] == "detector-B" for r in refs)
    groups: dict[str, list[SampleRef]] = {}
    for ref in refs:
        groups.setdefault(ref.group, []).append(ref)
        assert ref.id.startswith(ref.group + "-i")
    assert len(groups) == len(CLASSES) * 3
    assert all(len(g) == 4 and len({r.label for r in g}) == 1 for g in groups.values())


def test_reads_have_the_configured_shape():
    source = _source(size=(96, 160), classes=["network", "needles"])
    assert source.mask_classes == MASK_CLASSES
    for ref in source.list_samples()[::3]:
        image, mask = source.read(ref), source.read_mask(ref)
        assert image.shape == mask.shape == (96, 160)
        assert image.dtype == mask.dtype == np.uint8


def test_reads_are_copies():
    source = _source()
    ref = source.list_samples()[0]
    source.read(ref)[:] = 0
    source.read_mask(ref)[:] = 7
    assert source.read(ref).any() and (source.read_mask(ref) <= 1).all()


def test_pickle_round_trip_drops_the_cache():
    source = _source(shortcut=ShortcutSpec())
    refs = source.list_samples()
    expected = [source.read(r) for r in refs[:4]]
    payload = pickle.dumps(source)
    assert len(payload) < 4096  # the config only, not cached pixels
    restored = pickle.loads(payload)
    assert restored.config == source.config
    for ref, image in zip(refs, expected):
        assert np.array_equal(restored.read(ref), image)


def test_registered_and_described():
    assert SOURCES.get("synthetic") is SyntheticSource
    assert SyntheticSource.Config is SyntheticConfig
    text = _source(seed=3, condition_name="low-kV").describe()
    assert "seed=3" in text and "low-kV" in text


def test_config_from_plain_data():
    config = SyntheticConfig.model_validate(
        {"kind": "synthetic", "size": [64, 80], "condition": {"noise_std": 0.1},
         "shortcut": {"probability": 0.5}}
    )
    assert config.size == (64, 80)
    assert config.condition.noise_std == 0.1 and config.shortcut.probability == 0.5


def test_generation_is_fast():
    """A 128 px image takes a few ms; the bound only catches per-pixel Python loops."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for class_name in CLASSES * 4:
        generate_micrograph(class_name, SIZE, rng)
    assert (time.perf_counter() - start) / 16 < 0.1


# ----------------------------------------------------------------------------- errors


def test_unknown_class_in_config_lists_valid_ones():
    with pytest.raises(ValidationError) as info:
        SyntheticConfig(classes=["particles", "ferrite"])
    assert "ferrite" in str(info.value)
    assert all(name in str(info.value) for name in CLASSES)


def test_unknown_class_in_generator_lists_valid_ones():
    with pytest.raises(SourceError, match="ferrite.*particles, lamellae, network, needles"):
        generate_micrograph("ferrite", SIZE, np.random.default_rng(0))


@pytest.mark.parametrize(
    "sample_id", ["needles-s00-i00", "particles-s09-i00", "particles-s00-i05", "bogus"]
)
def test_foreign_sample_is_refused(sample_id):
    source = _source(classes=["particles"])
    ref = SampleRef(id=sample_id, uri="", label="particles", group="")
    with pytest.raises(SourceError, match=sample_id):
        source.read(ref)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": (16, 128)},
        {"images_per_specimen": 0},
        {"um_per_px": 0},
        {"classes": []},
        {"classes": ["network", "network"]},
        {"condition": {"noise_std": -0.1}},
        {"condition": {"scale": 0}},
        {"shortcut": {"probability": 1.5}},
        {"colour": "red"},
        {"condition": {"gamma": 2.0}},
    ],
)
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValidationError):
        SyntheticConfig.model_validate(bad)


def test_length_coded_bar_says_whose_corner_it_is():
    """With ``length_code`` the bar at CORNERS[i] is 1 + i/2 times as long, inset like the plain bar."""
    spec = ShortcutSpec(length_code=True)
    assert [marker_shape(SIZE, spec, c)[1] for c in CORNERS] == [16, 24, 32, 40]
    assert marker_shape(SIZE, spec) == marker_shape(SIZE, ShortcutSpec())  # no corner: the plain bar
    source = _source(shortcut=spec)
    for ref in source.list_samples()[::3]:
        ys, xs = np.nonzero(source.read_mask(ref) == 2)
        corner = ref.metadata["shortcut_position"]
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == marker_shape(SIZE, spec, corner)
        assert (ys.min(), xs.min()) == corner_position(corner, SIZE, spec)
