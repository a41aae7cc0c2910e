"""Expert masks as labs have them, through a real ingest (Zarr on disk, Dask workers): 0/255 binary
masks, index masks of named classes (gray and palette PNGs), masks for a subset of the images (one
summary line), and undeclared values refused naming the file."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import folder_config, write_folder_dataset
from xaiflow import schema, store
from xaiflow.config import parse_config
from xaiflow.geometry import resample
from xaiflow.ingest import IngestError, WriteJob, ingest_dataset
from xaiflow.jobs import run_job
from xaiflow.runtime import TaskError
from xaiflow.maskspec import has_mask
from xaiflow.sources.base import SourceError, Window

CLASSES = ["matrix", "carbide_network", "spheroidite", "widmanstatten"]
WINDOW = Window(0, 8, 48, 48)  # 48x64 sources: the centred 48x48 square, resampled to 32x32


def dataset(cfg: dict):
    return parse_config({"datasets": [cfg]}).datasets[0]


def quadrants(seed: int) -> np.ndarray:
    """A 48x64 index mask with the four classes in rotated quadrants (so images differ)."""
    m = np.zeros((48, 64), np.uint8)
    m[:24, 32:], m[24:, :32], m[24:, 32:] = 1, 2, 3
    return np.roll(m, seed * 5, axis=1)


def save_masks(root, masks: dict[str, np.ndarray], palette: tuple[str, ...] = ()) -> None:
    (root / "masks").mkdir(exist_ok=True)
    for stem, m in masks.items():
        im = Image.fromarray(m)
        if stem in palette:  # a palette PNG: pixel values are palette indices, colours arbitrary
            im = im.convert("P")
            im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0] + [0] * 756)
        im.save(root / "masks" / f"{stem}.png")


def stems(root) -> list[str]:
    return sorted(p.stem for p in (root / "img").glob("*.png"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("masks") / "data")


def masks_config(root, name, **masks):
    return dataset(folder_config(root, name, source={"masks": {"dir": "masks", **masks}}))


def test_binary_0_255_masks(tmp_path, client):
    root = write_folder_dataset(tmp_path / "data", n_specimens=2, per_specimen=2)
    m = np.zeros((48, 64), np.uint8)
    m[:, 32:] = 255
    save_masks(root, {s: m for s in stems(root)})
    ws = tmp_path / "ws.zarr"
    ingest_dataset(masks_config(root, "bin", classes=["matrix", "carbide"], encoding="binary"), ws, client=client)
    masks = store.open_group(ws, "masks/bin")
    schema.validate_masks(masks, store.open_group(ws, "images/bin"), "masks/bin")
    assert masks.attrs["mask_classes"] == ["matrix", "carbide"] and has_mask(masks).all()
    np.testing.assert_array_equal(masks.mask.values, np.broadcast_to(resample(m // 255, WINDOW, (32, 32), nearest=True),
                                                                     (4, 32, 32)))
    assert set(np.unique(masks.mask.values)) == {0, 1}


def test_index_masks_of_four_named_classes_gray_and_palette(data, tmp_path, client, caplog):
    names = stems(data)
    raw = {s: quadrants(i) for i, s in enumerate(names)}
    save_masks(data, raw, palette=(names[0], names[5]))
    ws = tmp_path / "ws.zarr"
    with caplog.at_level(logging.INFO, logger="xaiflow"):
        ingest_dataset(masks_config(data, "idx", classes=CLASSES), ws, client=client)
    masks = store.open_group(ws, "masks/idx")
    assert masks.attrs["mask_classes"] == CLASSES and has_mask(masks).all()
    for s in names:
        np.testing.assert_array_equal(masks.mask.sel(sample=s).values, resample(raw[s], WINDOW, (32, 32), nearest=True),
                                      err_msg=s)
    assert set(np.unique(masks.mask.values)) == {0, 1, 2, 3}
    assert [r.getMessage() for r in caplog.records if "masks:" in r.getMessage()] == \
        ["dataset idx: masks: all 12 images have a mask"]


def test_masks_for_a_subset_one_summary_line(data, tmp_path, client, caplog):
    names = stems(data)
    annotated = names[::4]  # 3 of 12
    save_masks(data, {s: quadrants(1) for s in names})
    for s in set(names) - set(annotated):
        (data / "masks" / f"{s}.png").unlink()
    ws = tmp_path / "ws.zarr"
    with caplog.at_level(logging.INFO):
        res = ingest_dataset(masks_config(data, "some", classes=CLASSES), ws, client=client)
    assert res.n_samples == 12 and res.n_skipped == 0
    mask_lines = [r for r in caplog.records if "mask" in r.getMessage()]
    assert len(mask_lines) == 1, [r.getMessage() for r in mask_lines]
    assert mask_lines[0].levelno == logging.WARNING
    assert mask_lines[0].getMessage() == ("dataset some: masks: 3 of 12 images have a mask; 9 without (not annotated: "
                                          "localization metrics skip them)")
    masks = store.open_group(ws, "masks/some")
    schema.validate_masks(masks, store.open_group(ws, "images/some"), "masks/some")
    flags = has_mask(masks)
    assert masks.has_mask.dtype == bool
    assert store.strings(masks.sample.values[flags]).tolist() == annotated
    assert not masks.mask.values[~flags].any() and masks.mask.values[flags].any()


def test_has_mask_decided_at_planning_travels_with_a_resumed_write(tmp_path, client):
    """An ingest killed after its first chunk; before the resume a flagged sample's mask file is removed
    (an error naming it, not an all-zero mask under has_mask) and an unflagged sample's appears (it stays
    without mask: has_mask is what the template said)."""
    root = write_folder_dataset(tmp_path / "data", n_specimens=2, per_specimen=4)  # 8 images, chunks of 2
    names = stems(root)
    raw = {s: quadrants(i) for i, s in enumerate(names)}
    save_masks(root, {s: raw[s] for s in names[:6]})
    cfg = dataset(folder_config(root, "resume", chunk_size=2, source={"masks": {"dir": "masks", "classes": CLASSES}}))
    ws = tmp_path / "ws.zarr"

    def killed_after_one_chunk(job):
        if isinstance(job, WriteJob):
            job.run_chunk(job.chunks[0])
            return None
        return run_job(job, client=client)

    ingest_dataset(cfg, ws, runner=killed_after_one_chunk)
    (root / "masks" / f"{names[3]}.png").unlink()  # flagged, in a chunk not yet written
    save_masks(root, {names[6]: raw[names[6]]})  # not flagged, in a chunk not yet written
    with pytest.raises(TaskError, match=rf"1 of 3 write tasks failed.*mask file .*masks/{names[3]}.png: the mask of "
                                        "sample 's0_3' .* was there when this ingest was planned and is missing now; "
                                        "restore it") as e:
        ingest_dataset(cfg, ws, client=client)
    assert isinstance(e.value.__cause__, SourceError)
    save_masks(root, {names[3]: raw[names[3]]})
    assert ingest_dataset(cfg, ws, client=client).status == "resumed"
    masks = store.open_group(ws, "masks/resume")
    schema.validate_masks(masks, store.open_group(ws, "images/resume"), "masks/resume")
    assert store.strings(masks.sample.values).tolist() == names
    assert has_mask(masks).tolist() == [True] * 6 + [False] * 2
    for i, s in enumerate(names[:6]):
        np.testing.assert_array_equal(masks.mask.values[i], resample(raw[s], WINDOW, (32, 32), nearest=True), err_msg=s)
    assert not masks.mask.values[6:].any()  # names[6]'s late mask is not content under has_mask False


def test_undeclared_values_and_oversized_masks_are_refused_naming_the_file(tmp_path, client):
    root = write_folder_dataset(tmp_path / "data", n_specimens=2, per_specimen=2)
    names = stems(root)
    bad = quadrants(0)
    bad[5, 5] = 7
    save_masks(root, {**{s: quadrants(0) for s in names}, names[1]: bad})
    ws = tmp_path / "ws.zarr"
    with pytest.raises(IngestError) as e:
        ingest_dataset(masks_config(root, "bad", classes=CLASSES), ws, client=client)
    msg = str(e.value)
    assert f"masks/{names[1]}.png: mask value(s) 7 not declared" in msg
    assert "0 = matrix, 1 = carbide_network, 2 = spheroidite, 3 = widmanstatten" in msg
    assert not store.group_exists(ws, "images/bad") and not store.group_exists(ws, "masks/bad")  # nothing written

    # binary: 0/255 or 0/1 only; a grey level (anti-aliased edge) is named
    half = np.where(quadrants(0) > 0, 255, 0).astype(np.uint8)
    half[0, 0] = 128
    save_masks(root, {s: half for s in names})
    with pytest.raises(IngestError, match=r"mask value\(s\) 128 not declared; declared values: 0 = matrix, "
                                          r"1 = carbide, 255 = carbide"):
        ingest_dataset(masks_config(root, "bad", classes=["matrix", "carbide"], encoding="binary"), ws, client=client)
    # a 0/255 mask read as class indices: the error says which encoding reads it
    save_masks(root, {s: np.where(half == 128, 0, half).astype(np.uint8) for s in names})
    with pytest.raises(IngestError, match=r"mask value\(s\) 255 not declared.*set source.masks.encoding: binary"):
        ingest_dataset(masks_config(root, "bad", classes=["matrix", "carbide"]), ws, client=client)
    save_masks(root, {s: half for s in names})
    # ... a grey level, which an explicit value table declares
    ingest_dataset(masks_config(root, "table", classes=["matrix", "edge", "carbide"],
                                values={0: "matrix", 128: "edge", 255: "carbide"}), ws, client=client)
    stored = store.open_group(ws, "masks/table").mask.values
    assert set(np.unique(stored)) <= {0, 1, 2} and (stored == 2).any()

    # a mask that is a symlink out of the mask folder is refused (the folder's files are data)
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(quadrants(0)).save(outside)
    (root / "masks" / f"{names[3]}.png").unlink()
    (root / "masks" / f"{names[3]}.png").symlink_to(outside)
    with pytest.raises(IngestError, match=rf"mask file .*{names[3]}.png lies outside the mask folder"):
        ingest_dataset(masks_config(root, "out", classes=CLASSES), ws, client=client)
    (root / "masks" / f"{names[3]}.png").unlink()
    save_masks(root, {names[3]: quadrants(0)})

    # a mask declaring more pixels than source.max_pixels is refused from its header
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(root / "masks" / f"{names[2]}.png")
    cfg = folder_config(root, "big", source={"masks": {"dir": "masks", "classes": CLASSES}, "max_pixels": 48 * 64})
    with pytest.raises(IngestError, match=rf"masks/{names[2]}.png: the image declares 200 x 200"):
        ingest_dataset(dataset(cfg), ws, client=client)


def test_mask_config_errors(tmp_path):
    root = write_folder_dataset(tmp_path / "data", n_specimens=1, per_specimen=1)
    with pytest.raises(Exception, match="binary needs exactly two classes"):
        masks_config(root, "x", classes=CLASSES, encoding="binary")
    with pytest.raises(Exception, match=r"unknown classes \['pores'\]"):
        masks_config(root, "x", classes=CLASSES, values={0: "matrix", 9: "pores"})
    with pytest.raises(IngestError, match=r"mask folder .*masks \(source.masks.dir\) does not exist"):
        ingest_dataset(masks_config(root, "x", classes=CLASSES), tmp_path / "ws.zarr")
    # the defaults stay out of the config (and its hash): workspaces ingested before keep their hash
    cfg = masks_config(root, "x", classes=CLASSES)
    assert cfg.model_dump(mode="json")["source"]["masks"] == {"dir": "masks", "suffix": ".png", "classes": CLASSES}
