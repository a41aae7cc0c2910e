"""Hostile data and configs: decompression bombs, files outside the data folder, one bad CSV cell,
binary or impossible configs, parameter values that would take the host's memory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import folder_config, write_folder_dataset
from reliability.conftest import assert_clean_error, cli, copy_workspace, write_config
from xaiflow import store

pytestmark = pytest.mark.slow


def write_png_bomb(path: Path, side: int = 30_000) -> Path:
    """A 1-bit PNG declaring side x side pixels (900 MP at 30000): ~100 KB of zlib-compressed zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8 + 1)  # filter byte + 1-bit samples
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _dataset_with_row(tmp_path: Path, file: str, **source) -> tuple[Path, Path]:
    """A folder dataset (12 good rows) plus one row naming ``file``; its run config and workspace."""
    root = write_folder_dataset(tmp_path / "data")
    with open(root / "labels.csv", "a") as f:
        f.write(f"{file},a,spec9,0.1,SE\n")
    config = write_config(tmp_path / "run.yaml", datasets=[folder_config(root, source=source)])
    return config, tmp_path / "ws.zarr"


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    config, ws = _dataset_with_row(tmp_path, "img/bomb.png")
    bomb = write_png_bomb(tmp_path / "data" / "img" / "bomb.png")
    assert bomb.stat().st_size < 200_000
    # in-process threads: every decode would happen in the CLI's own process, whose peak we read
    res = cli("ingest", config, "-w", ws, "--cluster", "threads", peak=True)
    assert_clean_error(res, "bomb.png", "30000 x 30000", "source.max_pixels")
    assert not store.group_exists(ws, "images/tiny")  # on_error raise: nothing written
    assert res.peak_mb < 700, f"the CLI process peaked at {res.peak_mb:.0f} MB (decoded, the bomb is 900 MB)"
    # on_error: skip ingests the rest and records the bomb
    data = yaml.safe_load(config.read_text())
    data["datasets"][0]["on_error"] = "skip"
    config.write_text(yaml.safe_dump(data))
    res = cli("ingest", config, "-w", ws, "--cluster", "local")
    assert res.returncode == 0, res.stderr
    assert "tiny: written, 12 samples, 1 skipped" in res.stdout
    skipped = store.group_attrs(ws, "images/tiny")["skipped"]
    assert [s["id"] for s in skipped] == ["bomb"] and "max_pixels" in skipped[0]["reason"]


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_files_outside_the_data_folder_are_refused(tmp_path, where):
    secret = tmp_path / "secret" / "private.png"
    write_folder_dataset(tmp_path / "secret_data", n_specimens=1, per_specimen=1)
    secret.parent.mkdir()
    (tmp_path / "secret_data" / "img" / "s0_0.png").rename(secret)
    if where == "parent":
        row = "../secret/private.png"
    elif where == "absolute":
        row = str(secret)
    else:
        row = "img/link.png"
    config, ws = _dataset_with_row(tmp_path, row)
    if where == "symlink":
        (tmp_path / "data" / "img" / "link.png").symlink_to(secret)
    res = cli("ingest", config, "-w", ws, "--cluster", "threads")
    assert_clean_error(res, "labels.csv row 14", "lies outside the data folder", "allow_outside_root")
    assert not store.group_exists(ws, "images/tiny")
    # an explicit config option lets a trusted layout through
    data = yaml.safe_load(config.read_text())
    data["datasets"][0]["source"]["allow_outside_root"] = True
    config.write_text(yaml.safe_dump(data))
    res = cli("ingest", config, "-w", ws, "--cluster", "threads")
    assert res.returncode == 0 and "tiny: written, 13 samples" in res.stdout, res.stderr


def test_one_bad_number_is_that_rows_problem_only(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    lines = (root / "labels.csv").read_text().splitlines()
    fields = lines[4].split(",")
    fields[3] = "0.1um"  # um_per_px of the 4th image, with its unit typed in
    lines[4] = ",".join(fields)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "run.yaml", datasets=[folder_config(root)])
    res = cli("ingest", config, "-w", tmp_path / "ws.zarr", "--cluster", "threads")
    assert_clean_error(res, "1 bad item", "labels.csv row 5", "'um_per_px' must be a positive number, got '0.1um'")
    assert res.stderr.count("must be a positive number") == 1
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root, on_error="skip")]}))
    res = cli("ingest", config, "-w", tmp_path / "ws.zarr", "--cluster", "threads")
    assert res.returncode == 0 and "tiny: written, 11 samples, 1 skipped" in res.stdout, res.stderr


def test_configs_that_cannot_run_are_refused_before_any_work(tmp_path, trained):
    config, ws = trained
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_clean_error(cli("ingest", binary, "-w", tmp_path / "ws.zarr"), str(binary), "not a text file")
    run = yaml.safe_load(config.read_text())
    huge = write_config(tmp_path / "arch.yaml", **{**run, "train": {**run["train"], "arch": "huge_cnn"}})
    assert_clean_error(cli("train", huge, "-w", copy_workspace(ws, tmp_path / "a.zarr")),
                       "unknown model architecture 'huge_cnn'", "small_cnn")
    tpu = write_config(tmp_path / "tpu.yaml", **{**run, "train": {**run["train"], "device": "tpu"}})
    # the model of this config is trained already: the device is refused anyway, when the config is read
    assert_clean_error(cli("train", tpu, "-w", copy_workspace(ws, tmp_path / "b.zarr")), "train.device", "tpu")


def test_a_parameter_cannot_take_the_host_down(tmp_path, trained):
    config, ws = trained
    run = yaml.safe_load(config.read_text())
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    billion = write_config(tmp_path / "billion.yaml", **{**run, "attribution": {
        **run["attribution"], "methods": [{"name": "integrated_gradients", "params": {"n_steps": 10**9}}]}})
    assert_clean_error(cli("attribute", billion, "-w", ws, "--cluster", "threads"),
                       "n_steps", "less than or equal to 4096")
    tight = write_config(tmp_path / "tight.yaml", **{**run, "attribution": {
        **run["attribution"], "memory_budget_mb": 64, "batch_size": 512,
        "methods": [{"name": "integrated_gradients", "params": {"n_steps": 4096}}]}})
    res = cli("attribute", tight, "-w", ws, "--cluster", "threads")
    assert_clean_error(res, "methods[integrated_gradients] (integrated_gradients)", "n_steps=4096", "MiB",
                       "attribution.memory_budget_mb")
    assert not any(g.startswith("saliency/") for g in store.list_groups(ws))  # refused before writing
