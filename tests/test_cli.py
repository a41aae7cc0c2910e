"""The ``xaiflow`` commands end to end on tiny workspaces: outputs, files written, exit code 2 with
a clear message on bad input. The commands run in this process (:mod:`cli_run`), except in
:func:`test_installed_entry_point`, the one test of the installed program in a real subprocess."""

import subprocess
import sys
from pathlib import Path

from cli_run import run
from conftest import folder_config, write_folder_dataset, write_tiny_run_config

import pytest
import xaiflow
import xarray as xr
import yaml

# the commands run in this process, without the per-call subprocess timeout they had before
pytestmark = pytest.mark.timeout(300)


def test_installed_entry_point(tmp_path):
    """The only real subprocesses of the CLI tests (the others run in-process): the installed
    ``xaiflow`` console script and ``python -m xaiflow.cli`` with a real command, so packaging,
    the ``__main__`` guard and the process exit code stay covered."""
    script = Path(sys.executable).with_name("xaiflow")
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"xaiflow {xaiflow.__version__}\n", version.stderr
    root = write_folder_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root)]}))
    res = subprocess.run([sys.executable, "-m", "xaiflow.cli", "ingest", str(config), "-w", str(tmp_path / "ws.zarr"),
                          "--cluster", "threads"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "tiny: written, 12 samples" in res.stdout and "12 samples, 2 classes, 4 specimens" in res.stdout


def test_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout == f"xaiflow {xaiflow.__version__}\n"


def test_ingest_info_and_clear_errors(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root)]}))
    ws = tmp_path / "ws.zarr"
    res = run("ingest", str(config), "-w", str(ws), "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    assert "tiny: written, 12 samples" in res.stdout and "images/tiny" in res.stdout
    info = run("info", "-w", str(ws))
    assert info.returncode == 0 and "12 samples, 2 classes, 4 specimens" in info.stdout
    # bad config: exit code 2 and a message naming the field, no traceback
    config.write_text(yaml.safe_dump({"datasets": [{**folder_config(root), "chunksize": 3}]}))
    bad = run("ingest", str(config), "-w", str(ws), "--cluster", "threads")
    assert bad.returncode == 2 and "datasets.0.chunksize" in bad.stderr and "Traceback" not in bad.stderr
    missing = run("info", "-w", str(tmp_path / "nope.zarr"))
    assert missing.returncode == 2 and "not an xaiflow workspace" in missing.stderr


def test_train_models_predict_commands(tmp_path):
    config = write_tiny_run_config(tmp_path)
    ws = tmp_path / "ws.zarr"
    assert run("ingest", str(config), "-w", str(ws), "--cluster", "threads").returncode == 0
    res = run("train", str(config), "-w", str(ws))
    assert res.returncode == 0, res.stderr
    assert "majority-class baseline" in res.stdout and "small_cnn-syn-" in res.stdout
    model_id = next(w for w in res.stdout.split() if w.startswith("small_cnn-syn-"))
    listing = run("models", "-w", str(ws))
    assert listing.returncode == 0 and model_id in listing.stdout and " ok " in listing.stdout
    pred = run("predict", "-w", str(ws), "--model", model_id, "--dataset", "syn", "--cluster", "threads")
    assert pred.returncode == 0 and f"predictions/syn/{model_id}: 24 samples" in pred.stdout
    # plain xarray: split is a per-sample coordinate, not a dimension of its own
    p = xr.open_zarr(ws, group=f"predictions/syn/{model_id}", consolidated=False)
    assert p.split.dims == ("sample",) and set(p.dims) == {"sample", "class"}
    test = p.predicted.where((p.split == "test").compute(), drop=True)
    assert test.sizes["sample"] == int((p.split.values == "test").sum()) > 0
    bad = run("predict", "-w", str(ws), "--model", "nope", "--dataset", "syn", "--cluster", "threads")
    assert bad.returncode == 2 and "no trained model 'nope'" in bad.stderr


def test_attribute_and_show_commands(tmp_path):
    config = write_tiny_run_config(tmp_path, attribution={"dataset": "syn", "methods": ["saliency", "grad_cam"],
                                                          "device": "cpu", "splits": ["test"]})
    ws = tmp_path / "ws.zarr"
    assert run("ingest", str(config), "-w", str(ws), "--cluster", "threads").returncode == 0
    assert run("train", str(config), "-w", str(ws), "--no-predict").returncode == 0
    res = run("attribute", str(config), "-w", str(ws), "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    assert "chunk(s) computed, 0 already complete" in res.stdout and "grad_cam" in res.stdout
    n_chunks = int(res.stdout.split(" chunk(s) computed")[0].split()[-1])
    # not a terminal (as in a batch job's log): one progress line per finished chunk task
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("syn chunks attribute: ")]
    assert [ln.split(": ")[1].split()[0] for ln in lines] == [f"{i}/{n_chunks}" for i in range(1, n_chunks + 1)]
    model_id = res.stdout.split("saliency/syn/")[1].split(":")[0]
    again = run("attribute", str(config), "-w", str(ws), "--cluster", "threads")
    assert again.returncode == 0 and "0 chunk(s) computed" in again.stdout
    assert "while training" not in res.stderr + again.stderr  # the test split only: no warning
    (tmp_path / "all").mkdir()
    everything = write_tiny_run_config(tmp_path / "all", attribution={"dataset": "syn", "methods": ["saliency"],
                                                                      "device": "cpu", "splits": ["train", "test"]})
    seen = run("attribute", str(everything), "-w", str(ws), "--cluster", "threads")
    assert seen.returncode == 0, seen.stderr
    n_train = int((xr.open_zarr(ws, group="images/syn", consolidated=False).split.values == "train").sum())
    assert f"warning: {n_train} in its training split" in seen.stderr and "has seen them while training" in seen.stderr
    png = tmp_path / "grid.png"
    shown = run("show", "-w", str(ws), "-d", "syn", "-m", model_id, "-o", str(png))
    assert shown.returncode == 0, shown.stderr
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    bad = run("attribute", str(config), "-w", str(ws), "--methods", "shap", "--cluster", "threads", "-v")
    assert bad.returncode == 2 and "unknown attribution method 'shap'" in bad.stderr  # -v anywhere on the line
    assert "dask dashboard" not in bad.stderr  # refused before any cluster started
    grouped = run("query", "group-maps", "-w", str(ws), "-d", "syn", "--by", "label", "-o", str(tmp_path / "g.png"))
    assert grouped.returncode == 0, grouped.stderr
    assert "particles" in grouped.stdout and (tmp_path / "g.png").stat().st_size > 10_000
    agree = run("query", "agreement", "-w", str(ws), "-d", "syn", "-o", str(tmp_path / "a.png"))
    assert agree.returncode == 0 and "Spearman" in agree.stdout and "1.000" in agree.stdout
    mass = run("query", "mask-mass", "-w", str(ws), "-d", "syn")
    assert mass.returncode == 0 and "structure" in mass.stdout and "shortcut" in mass.stdout
    empty = run("query", "group-maps", "-w", str(ws), "-d", "syn", "--by", "um_per_px", "--bins", "50,60")
    assert empty.returncode == 2 and "no non-empty group" in empty.stderr
    scored = run("evaluate", "-w", str(ws), "-d", "syn", "--metrics", "deletion,pointing_game,sparseness",
                 "--mask-class", "structure", "--cluster", "threads")
    assert scored.returncode == 0, scored.stderr
    assert "deletion_random" in scored.stdout and "pointing_game" in scored.stdout and "±" in scored.stdout


def _leaf_commands(command, path=()):
    if hasattr(command, "commands"):  # a group (typer's own click)
        for name, sub in command.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_command_follows_one_argument_convention():
    """-w/--workspace ($XAIFLOW_WORKSPACE) everywhere; a run config only as the first argument CONFIG;
    -m/--model and -d/--dataset wherever a command takes them; --help says so."""
    import typer.main

    from xaiflow.cli import app

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    assert {"ingest", "info", "train", "models", "predict", "attribute", "show", "evaluate", "features", "shortcut",
            "report", "query group-maps", "study reduction"} <= set(commands)
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        ws = params["workspace"]
        assert ws.param_type_name == "option" and set(ws.opts) == {"-w", "--workspace"}, name
        assert ws.envvar == "XAIFLOW_WORKSPACE" and ws.required, name
        arguments = [p.name for p in command.params if p.param_type_name == "argument"]
        assert arguments in ([], ["config"]), f"{name}: positional arguments {arguments}"
        assert ("config" in params) == (name in {"ingest", "train", "attribute", "features", "study generalization",
                                                  "study reduction"}), name
        for option, flags in (("model", {"-m", "--model"}), ("dataset", {"-d", "--dataset"})):
            if option in params:
                assert set(params[option].opts) == flags, f"{name}: {params[option].opts}"
        help_text = run(*name.split(), "--help").stdout
        assert "--workspace" in help_text and "XAIFLOW_WORKSPACE" in help_text, name


def test_tables_keep_full_ids_on_a_narrow_terminal():
    """Ids printed by one command are what the next takes: a narrow terminal wraps the lines,
    nothing is cut to ``small_...`` and no column is dropped."""
    import io

    from xaiflow.cli.common import ResultConsole, rows_table

    console = ResultConsole(width=40, file=io.StringIO(), force_terminal=True, color_system=None)
    model_id = "small_cnn-synthetic-" + "0123456789abcdef" * 2
    console.print(rows_table([{"model_id": model_id, "dataset": "synthetic", "val_bal_acc": 0.5}],
                             ["model_id", "dataset", "val_bal_acc"]))
    text = console.file.getvalue()
    assert model_id in text and "synthetic" in text and "0.500" in text and "…" not in text
