"""The ``xaiflow`` commands end to end on tiny workspaces: outputs, files written, exit code 2 with
a clear message on bad input. The commands run in this process (:mod:`cli_run`), except in
:func:`test_installed_entry_point`, the one test of the installed program in a real subprocess, and the
console tests, which need the output of the worker processes too."""

import json
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


# -- issue 19: one convention, --json for scripts, names checked before a cluster starts, a quiet console --------


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """A workspace with one model and its saliency maps of the test split (threads: no processes), made
    with the CLI; returns (workspace, config, model id)."""
    tmp = tmp_path_factory.mktemp("mapped")
    config = write_tiny_run_config(tmp, attribution={"dataset": "syn", "methods": ["saliency"], "device": "cpu",
                                                     "splits": ["test"]})
    ws = tmp / "ws.zarr"
    for args in (("ingest", config, "--cluster", "threads"), ("train", config, "--no-predict"),
                 ("attribute", config, "--cluster", "threads")):
        res = run(*args, "-w", ws)
        assert res.returncode == 0, res.stderr
    return ws, config, res.stdout.split("saliency/syn/")[1].split(":")[0]


def _json(*args):
    """``xaiflow ARGS`` whose stdout must be one JSON document; (exit code, document, stderr)."""
    res = run(*args)
    return res.returncode, json.loads(res.stdout), res.stderr


def test_json_documents(mapped, tmp_path):
    """--json anywhere on the line: one JSON document on stdout with stable keys (tables as lists of rows,
    files written, warnings), nothing else there; errors as {"error": ...} with exit code 2."""
    ws, config, model_id = mapped
    code, doc, _ = _json("models", "-w", ws, "--json")
    assert code == 0 and [m["model_id"] for m in doc["models"]] == [model_id] and doc["models"][0]["status"] == "ok"
    code, doc, _ = _json("--json", "info", "-w", ws)
    assert code == 0 and {"images/syn", f"saliency/syn/{model_id}"} <= {g["path"] for g in doc["groups"]}
    # -v as well: the logs go to stderr, stdout stays one document
    code, doc, err = _json("attribute", config, "-w", ws, "--cluster", "threads", "--json", "-v")
    assert code == 0 and doc["group"] == f"saliency/syn/{model_id}" and doc["chunks_run"] == 0
    assert "INFO xaiflow: dask cluster (threads)" in err  # what the checks of names before a cluster look for
    png = tmp_path / "g.png"
    code, doc, err = _json("query", "group-maps", "-w", ws, "--by", "label_index", "--bins", "-0.5,1.5", "-o", png,
                           "--json")
    n_test = int((xr.open_zarr(ws, group="images/syn", consolidated=False).split.values == "test").sum())
    # label_index 2 and 3 fall outside the bins: counted, warned about, and the rest grouped
    assert code == 0 and doc["samples_outside_bins"] == n_test // 2 and len(doc["warnings"]) == 1
    assert sum(g["samples"] for g in doc["groups"]) == n_test - n_test // 2 and doc["files"] == [str(png)]
    assert "outside the bins" in err and png.stat().st_size > 1000
    code, doc, _ = _json("--json", "query", "mask-mass", "-w", ws)
    assert code == 0 and {r["mask_class"] for r in doc["mask_mass"]} >= {"structure", "shortcut"}
    assert all(set(r) == {"method", "mask_class", "relevance_share", "area_share", "ratio"} for r in doc["mask_mass"])
    code, doc, _ = _json("evaluate", "-w", ws, "--metrics", "sparseness", "--cluster", "threads", "--json")
    assert code == 0 and [(r["method"], r["metric"], r["n"]) for r in doc["metrics"]] == [
        ("saliency", "sparseness", n_test)] and 0 <= doc["metrics"][0]["mean"] <= 1
    code, doc, _ = _json("shortcut", "-w", ws, "--json")  # the only model: no --model needed
    assert code == 0 and doc["model_id"] == model_id and doc["verdict"] in {"shortcut", "structure", "inconclusive"}
    assert doc["conclusion"] and "messages" not in doc
    code, doc, _ = _json("--version", "--json")
    assert code == 0 and doc == {"version": xaiflow.__version__}
    # errors: ours, a usage error of a subcommand and one of the app
    code, doc, err = _json("models", "-w", tmp_path / "nope.zarr", "--json")
    assert code == 2 and set(doc) == {"error"} and "run `xaiflow train`" in doc["error"] and "error:" in err
    code, doc, _ = _json("--json", "query", "group-maps", "-w", ws, "--bogus")
    assert code == 2 and set(doc) == {"error"} and doc["error"].startswith("No such option: --bogus")
    code, doc, _ = _json("--json", "--bogus")
    assert code == 2 and "--bogus" in doc["error"]
    # without --json: the same command prints its table for people
    assert "mask class" in run("query", "mask-mass", "-w", ws).stdout


def test_one_model_defaults_and_prefixes(mapped, tmp_path):
    """With one model and one set of maps no command needs -m/-d; a unique prefix stands for the full id."""
    ws, _, model_id = mapped
    for args in (("show", "-o", tmp_path / "grid.png"), ("query", "agreement", "-o", tmp_path / "a.png"),
                 ("shortcut",), ("human", "--from-masks", "structure", "--n-boot", "10"),
                 ("predict", "--cluster", "threads")):
        res = run(*args, "-w", ws)
        assert res.returncode == 0, (args, res.stderr)
    assert (tmp_path / "grid.png").stat().st_size > 1000 and (tmp_path / "a.png").stat().st_size > 1000
    prefix = model_id[: len("small_cnn-syn-") + 3]
    code, doc, _ = _json("predict", "-w", ws, "-m", prefix, "--cluster", "threads", "--json")
    assert code == 0 and doc["group"] == f"predictions/syn/{model_id}" and doc["n_samples"] == 24
    code, doc, _ = _json("human", "-w", ws, "-m", prefix, "--from-masks", "structure", "--n-boot", "10", "--json")
    assert code == 0 and doc["group"] == f"human/syn/{model_id}"
    code, doc, _ = _json("predict", "-w", ws, "-m", "nope", "--json")
    assert code == 2 and "no trained model 'nope'" in doc["error"] and model_id in doc["error"]


def test_names_checked_before_any_cluster_starts(mapped):
    """Misspelt names (cluster profile, metrics, saliency keys, probe method and transforms, baseline) are
    refused with exit code 2 before a cluster starts (-v would log the cluster's start)."""
    ws, config, _ = mapped
    cases = [(("attribute", config, "--cluster", "nope"), "unknown cluster profile 'nope'"),
             (("attribute", config, "--methods", "gradcam"), "unknown attribution method 'gradcam'"),
             (("evaluate", "--metrics", "roadd"), "unknown metric 'roadd'"),
             (("evaluate", "--methods", "grad_cam"), "grad_cam"),
             (("probe", "--method", "gradcam"), "unknown attribution method 'gradcam'"),
             (("probe", "-t", "rot45"), "unknown transform 'rot45'"),
             (("importance", "--baseline", "zero"), "unknown baseline 'zero'"),
             (("train", config, "--seeds", "1,x"), "--seeds: expected comma-separated integers, got '1,x'")]
    for args, message in cases:
        res = run(*args, "-w", ws, "--cluster", "local", "-v") if "--cluster" not in args else run(*args, "-w", ws,
                                                                                                      "-v")
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        assert "dask cluster" not in res.stderr and "Traceback" not in res.stderr, args


def test_shortcut_reports_samples_outside_the_bins(tmp_path):
    """Metadata bins that leave samples out say so (the verdict without masks bins um_per_px)."""
    root = write_folder_dataset(tmp_path / "data", n_specimens=8, per_specimen=2)  # um_per_px 0.1 and 0.2
    config = tmp_path / "run.yaml"
    split = {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root, split=split)],
                                      "train": {"dataset": "tiny", "epochs": 1, "model_params": {"widths": [8, 8]},
                                                "device": "cpu"}}))
    ws = tmp_path / "ws.zarr"
    for args in (("ingest", config, "--cluster", "threads"), ("train", config)):
        assert run(*args, "-w", ws).returncode == 0
    images = xr.open_zarr(ws, group="images/tiny", consolidated=False)
    test = images.split.values == "test"
    outside = int((images.um_per_px.values[test] > 0.15).sum())
    code, doc, err = _json("shortcut", "-w", ws, "--by", "um_per_px", "--bins", "0.05,0.15", "--json")
    assert code == 0 and doc["kind"] == "metadata" and doc["metadata"]["samples_outside_bins"] == outside > 0
    assert any(f"{outside} of the {int(test.sum())} test samples have um_per_px outside the bins" in w
               for w in doc["warnings"]) and "outside the bins" in err
    code, doc, _ = _json("shortcut", "-w", ws, "--by", "um_per_px", "--json")  # default bins: everything binned
    assert code == 0 and doc["metadata"]["samples_outside_bins"] == 0
    assert not any("outside the bins" in w for w in doc["warnings"])


def test_local_cluster_console_is_quiet(mapped):
    """A command on a real local cluster (worker processes, in a real process so that their output is
    seen too) prints its results and nothing alarming: no traceback, no error, a few lines; -v brings
    Dask's own messages back."""
    ws, config, _ = mapped
    command = [sys.executable, "-m", "xaiflow.cli", "attribute", str(config), "-w", str(ws), "--cluster", "local",
               "--overwrite"]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    text = quiet.stdout + quiet.stderr
    for bad in ("Traceback", "Error", "CommClosedError", "killing", "heartbeat", "INFO"):
        assert bad not in text, text
    assert len(text.splitlines()) < 10, text
    loud = run("attribute", config, "-w", ws, "--cluster", "threads", "-v")  # in-process: the scheduler's log
    assert loud.returncode == 0 and "INFO distributed.scheduler" in loud.stderr
    assert "INFO distributed" not in run("attribute", config, "-w", ws, "--cluster", "threads").stderr


SLOW_WORKER = """
import atexit, logging, sys, time
from xaiflow.runtime import ClusterConfig, dask_client

def slow_exit():
    atexit.register(time.sleep, 5)  # longer than the 4 s Dask's own close gives a worker process

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("xaiflow").setLevel(logging.INFO)  # verbose: Dask's warnings are not silenced
    with dask_client(ClusterConfig(kind="local", n_workers=1)) as client:
        client.run(slow_exit)
"""


def test_local_cluster_waits_for_slow_workers(tmp_path):
    """A worker process slow to exit (a busy machine, torch's teardown) is given time (xaiflow.nanny, the
    nanny of every local profile, also the Prefect runner's): not killed with 'Worker process still alive
    ... killing', no heartbeat error."""
    from xaiflow.clusters import PATIENT_NANNY, ClusterConfig, cluster_spec

    assert cluster_spec(ClusterConfig(kind="local")).kwargs["worker_class"] == PATIENT_NANNY
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WORKER)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Nanny at" in res.stderr and "closed" in res.stderr  # the verbose log is there
    for bad in ("still alive", "killing", "heartbeat", "Traceback", "CommClosedError"):
        assert bad not in res.stderr, res.stderr
