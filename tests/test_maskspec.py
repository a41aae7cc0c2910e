"""Mask selections: every config/CLI form, the errors, and the regions they cut."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xaiflow import schema
from xaiflow.errors import XaiflowError
from xaiflow.maskspec import (
    MaskSelection,
    MaskSpecError,
    has_mask,
    parse_mask_selection,
)

CLASSES = ["matrix", "carbide_network", "spheroidite", "widmanstatten"]
LABELS = ["network", "spheroidite", "pearlite"]


def test_default_is_every_class_but_the_background():
    sel = parse_mask_selection(None, CLASSES)
    assert sel == MaskSelection(("carbide_network", "spheroidite", "widmanstatten"), {})
    assert sel.describe() == "carbide_network+spheroidite+widmanstatten"


@pytest.mark.parametrize("value", ["carbide_network+spheroidite", ["carbide_network", "spheroidite"],
                                   ("carbide_network", "spheroidite"), "carbide_network,spheroidite"])
def test_union_for_every_label(value):
    sel = parse_mask_selection(value, CLASSES, LABELS)
    assert sel.default == ("carbide_network", "spheroidite") and dict(sel.by_label) == {}
    assert sel.classes_for("pearlite") == ("carbide_network", "spheroidite")


def test_single_class():
    assert parse_mask_selection("spheroidite", CLASSES).default == ("spheroidite",)


def test_mapping_and_cli_forms_agree():
    mapping = {"network": "carbide_network", "spheroidite": ["spheroidite"], "*": "widmanstatten"}
    cli = "network=carbide_network, spheroidite=spheroidite,*=widmanstatten"
    a, b = parse_mask_selection(mapping, CLASSES, LABELS), parse_mask_selection(cli, CLASSES, LABELS)
    assert a == b
    assert a.classes_for("network") == ("carbide_network",)
    assert a.classes_for("pearlite") == ("widmanstatten",)
    assert a.describe() == "network -> carbide_network; spheroidite -> spheroidite; others -> widmanstatten"
    assert a.identity() == {"default": ["widmanstatten"],
                            "by_label": {"network": ["carbide_network"], "spheroidite": ["spheroidite"]}}


def test_mapping_without_default_and_empty_label():
    sel = parse_mask_selection("network=carbide_network+spheroidite,pearlite=", CLASSES, LABELS)
    assert sel.default == () and sel.classes_for("pearlite") == () and sel.classes_for("spheroidite") == ()
    assert sel.classes_for("network") == ("carbide_network", "spheroidite")
    assert sel.describe() == "network -> carbide_network+spheroidite; pearlite -> (none); others -> (none)"
    assert sel.all_classes() == ("carbide_network", "spheroidite")


@pytest.mark.parametrize("value, words", [
    ("carbide", ["'carbide'", "carbide_network", "matrix"]),
    (["matrix", "ferrite"], ["'ferrite'", "valid"]),
    ({"network": "cementite"}, ["'cementite'"]),
    ("network=carbide_network,bainite=spheroidite", ["'bainite'", "network", "pearlite"]),
    ("network=carbide_network,spheroidite", ["'spheroidite'", "LABEL=CLASS"]),
    ("network=carbide_network,network=spheroidite", ["given twice"]),
    ("=carbide_network", ["no label"]),
    ([], ["names no mask class"]),
    ("", ["names no mask class"]),
    ({"network": 3}, ["network", "3"]),
    ({}, ["selects no mask class"]),
    ("carbide_network++spheroidite", ["empty mask class"]),
])
def test_errors_name_the_culprit_and_the_valid_ones(value, words):
    with pytest.raises(MaskSpecError) as e:
        parse_mask_selection(value, CLASSES, LABELS)
    assert isinstance(e.value, XaiflowError)
    for w in words:
        assert w in str(e.value)


def test_default_needs_a_foreground_class():
    with pytest.raises(MaskSpecError, match="only the class"):
        parse_mask_selection(None, ["matrix"])


def test_labels_unchecked_when_not_given():
    assert parse_mask_selection({"anything": "matrix"}, CLASSES).classes_for("anything") == ("matrix",)


def test_regions_follow_each_label():
    masks = np.array([[[0, 1], [2, 3]]] * 4, np.uint8)
    sel = parse_mask_selection({"network": "carbide_network", "spheroidite": "spheroidite+widmanstatten"},
                               CLASSES, LABELS)
    labels = ["network", "spheroidite", "pearlite", "network"]
    got = sel.regions(masks, labels, CLASSES)
    assert got.dtype == bool and got.shape == (4, 2, 2)
    np.testing.assert_array_equal(got[0], [[False, True], [False, False]])
    np.testing.assert_array_equal(got[1], [[False, False], [True, True]])
    np.testing.assert_array_equal(got[2], np.zeros((2, 2), bool))  # unlisted label, no default
    np.testing.assert_array_equal(got[3], got[0])
    np.testing.assert_array_equal(sel.region(masks[1], "spheroidite", CLASSES), got[1])
    for i, lab in enumerate(labels):  # the vectorized form equals the direct definition
        np.testing.assert_array_equal(got[i], np.isin(masks[i], [CLASSES.index(c) for c in sel.classes_for(lab)]))


def test_regions_empty_without_mask_and_area_is_nan():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[:, :2] = 1
    sel = parse_mask_selection("matrix", CLASSES)  # class 0: would cover an unannotated (all 0) mask
    flags = np.array([True, False, True])
    got = sel.regions(masks, ["a", "b", "c"], CLASSES, has_mask=flags)
    assert got[0].sum() == 8 and not got[1].any() and got[2].sum() == 8
    area = sel.area(masks, ["a", "b", "c"], CLASSES, has_mask=flags)
    np.testing.assert_allclose(area, [0.5, np.nan, 0.5])


def test_regions_refuse_bad_input():
    sel = parse_mask_selection("matrix", CLASSES)
    with pytest.raises(MaskSpecError, match="2 masks but 1 labels"):
        sel.regions(np.zeros((2, 2, 2), np.uint8), ["a"], CLASSES)
    with pytest.raises(MaskSpecError, match="integer"):
        sel.regions(np.zeros((1, 2, 2), np.float32), ["a"], CLASSES)
    with pytest.raises(MaskSpecError, match="unknown mask class"):
        MaskSelection(("nope",)).regions(np.zeros((1, 2, 2), np.uint8), ["a"], CLASSES)


def test_has_mask_reads_the_coordinate_or_defaults_to_all():
    ds = xr.Dataset({schema.MASK: ((schema.SAMPLE, schema.Y, schema.X), np.zeros((3, 2, 2), np.uint8))},
                    coords={schema.SAMPLE: ["a", "b", "c"]})
    assert has_mask(ds).tolist() == [True, True, True]
    ds = ds.assign_coords({schema.HAS_MASK: (schema.SAMPLE, [True, False, True])})
    assert has_mask(ds).tolist() == [True, False, True]
