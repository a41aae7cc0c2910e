from pathlib import Path

import pytest

from xaiflow.config import ConfigError, load_config, parse_config
from conftest import REPO, folder_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.datasets, path


def test_unknown_key_names_file_and_field(tmp_path):
    path = write(tmp_path, "datasets:\n  - name: x\n    source: {kind: synthetic}\n    chunk_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "datasets.0.chunk_sise" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_field_and_value(tmp_path):
    path = write(tmp_path, "datasets:\n  - name: x\n    source: {kind: synthetic}\n    chunk_size: many\n")
    with pytest.raises(ConfigError, match=r"datasets\.0\.chunk_size.*'many'"):
        load_config(path)


def test_unknown_source_kind_lists_valid_ones(tmp_path):
    path = write(tmp_path, "datasets:\n  - name: x\n    source: {kind: ftp}\n")
    with pytest.raises(ConfigError, match="folder.*panorama.*synthetic"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "datasets: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_env_var_and_relative_root(tmp_path, monkeypatch):
    text = "datasets:\n  - name: x\n    source: {kind: folder, root: '${XF_TEST_ROOT:-data}'}\n"
    path = write(tmp_path, text)
    monkeypatch.delenv("XF_TEST_ROOT", raising=False)
    assert load_config(path).datasets[0].source.root == (tmp_path / "data").resolve()
    monkeypatch.setenv("XF_TEST_ROOT", "/elsewhere")
    assert str(load_config(path).datasets[0].source.root) == "/elsewhere"
    assert load_config(path, data_dir=tmp_path).datasets[0].source.root == tmp_path.resolve()


def test_geometry_rules(tmp_path):
    with pytest.raises(ConfigError, match="target_um_per_px needs mode: resize"):
        parse_config({"datasets": [folder_config(tmp_path, geometry={"mode": "crop", "target_um_per_px": 0.1})]})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_config({"datasets": [folder_config(tmp_path, split={"fractions": {"train": 0.5, "test": 0.1}})]})


def test_duplicate_dataset_names(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"datasets": [folder_config(tmp_path), folder_config(tmp_path)]})


def test_config_hash_tracks_content(tmp_path):
    a = parse_config({"datasets": [folder_config(tmp_path)]}).datasets[0]
    b = parse_config({"datasets": [folder_config(tmp_path, chunk_size=8)]}).datasets[0]
    assert a.config_hash() == parse_config({"datasets": [folder_config(tmp_path)]}).datasets[0].config_hash()
    assert a.config_hash() != b.config_hash()


def test_one_write_task_is_bounded_by_the_product_of_its_fields(tmp_path):
    big = ("datasets:\n  - name: x\n    source: {kind: synthetic}\n    geometry: {size: [4096, 4096]}\n"
           "    chunk_size: 4096\n")
    with pytest.raises(ConfigError, match=r"datasets\.0.*65,536 MiB per write task.*lower chunk_size"):
        load_config(write(tmp_path, big))
    sharded = big.replace("chunk_size: 4096", "chunk_size: 32\n    shard_chunks: 64")  # 32 GiB per shard
    with pytest.raises(ConfigError, match="shard_chunks 64"):
        load_config(write(tmp_path, sharded))
    assert load_config(write(tmp_path, big.replace("chunk_size: 4096", "chunk_size: 32"))).datasets[0].chunk_size == 32


def test_shipped_configs_load_by_name_and_from_the_package_folder(tmp_path, monkeypatch):
    """Run configs and cluster profiles are package data (xaiflow/configs): a bare name or the
    repository path works from any folder, as in an installed wheel."""
    from xaiflow.clusters import PACKAGE_CLUSTER_DIR, load_cluster_profile
    from xaiflow.config import PACKAGE_CONFIG_DIR, packaged_configs

    import xaiflow  # noqa: I001

    package = Path(xaiflow.__file__).parent
    assert PACKAGE_CONFIG_DIR.parent == package and PACKAGE_CLUSTER_DIR.parent == PACKAGE_CONFIG_DIR
    assert {"quickstart", "uhcs"} <= set(packaged_configs())
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_config("quickstart").model_dump() == load_config(PACKAGE_CONFIG_DIR / "quickstart.yaml").model_dump()
    assert load_config("configs/quickstart.yaml").datasets[0].name == load_config("quickstart").datasets[0].name
    assert load_cluster_profile("slurm").kind == "slurm"
    with pytest.raises(ConfigError, match="shipped configs, usable by name: .*quickstart"):
        load_config("nosuchconfig")
