"""The contract (:func:`xaiflow.testing.check_source`) for every registered image source."""

import pytest

from xaiflow.config import parse_config
from xaiflow.ingest import make_source
from xaiflow.sources.base import SOURCES
from xaiflow.sources.panorama import tile_starts
from xaiflow.testing import check_source
from conftest import folder_config, write_folder_dataset


def _config(kind: str, tmp_path):
    if kind == "folder":
        return folder_config(write_folder_dataset(tmp_path / "f"))
    if kind == "panorama":
        root = write_folder_dataset(tmp_path / "p", n_specimens=2, per_specimen=1, size=(70, 90))
        return {"name": "p", "source": {"kind": "panorama", "root": str(root), "csv": "labels.csv",
                                        "columns": {"file": "file", "label": "label", "group": "specimen"},
                                        "tile": [32, 32], "overlap": 4}}
    if kind == "synthetic":
        return {"name": "s", "source": {"kind": "synthetic", "specimens_per_class": 1, "images_per_specimen": 2,
                                        "size": [48, 48]}}
    raise AssertionError(f"add a contract-test config for the new source {kind!r}")


@pytest.mark.parametrize("kind", SOURCES.names())
def test_source_contract(kind, tmp_path):
    check_source(make_source(parse_config({"datasets": [_config(kind, tmp_path)]}).datasets[0]))


@pytest.mark.parametrize("length, tile, overlap, expected", [
    (100, 40, 8, [0, 32, 60]), (80, 40, 0, [0, 40]), (40, 40, 0, [0]), (39, 40, 0, []),
])
def test_tile_starts_cover_the_image(length, tile, overlap, expected):
    assert tile_starts(length, tile, overlap) == expected
