"""The README works as written: its code blocks run, in order, against small workspaces.

Every ```python block is executed, and every ``xaiflow ...`` line of a ```bash/```console block
is run (in this process, :mod:`cli_run`), in the order of the README, from a temporary folder
used as the working directory, so the README's relative paths (``ws.zarr``,
``configs/uhcs.yaml``, ``workspace/quickstart.zarr``) resolve there. A block that cannot run in
CI carries ``<!-- readme-test: skip (reason) -->`` on the line right above it; the skips are
counted and each needs a reason. A ```yaml block whose first line is ``# NAME.yaml`` is that file
(the "your own data" config): it is written there when the reading reaches it. The same holds for ``docs/own-data.md`` (the "your own data"
walkthrough, run on a generated folder of PNGs and a CSV) and for the code cells of
``examples/explore_workspace.ipynb``.

What makes it quick (the README's examples are sized for the real data):

* ``configs/`` in that folder holds SMALLER copies of the shipped configs the README names
  (:func:`small_config`: same dataset names, sources, columns and model architecture, so the
  same commands, dataset names and model-id prefixes work; fewer images, 32 px, one epoch,
  cheap method parameters);
* ``workspace/quickstart.zarr`` (what ``make demo`` leaves behind) is built from the small
  quick-start config (without its UHCS subset, which no quick-start example uses) by the
  commands the pipeline runs (ingest, train, attribute);
* ``my_micrographs/`` is a generated folder of PNGs with the CSV the walkthrough describes;
* ``$XAIFLOW_CLUSTER_DIR`` holds a ``local.yaml`` profile naming the session's Dask cluster
  (the ``client`` fixture), so ``--cluster local``, every command's default, reuses it instead
  of starting a cluster per command (the documented way a site redefines a profile name); its
  workers work in the same folder while this module runs, as a cluster started there would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_run import run
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
OWN_DATA = REPO / "docs" / "own-data.md"
NOTEBOOK = REPO / "examples" / "explore_workspace.ipynb"
CONFIGS = REPO / "xaiflow" / "configs"

#: at most this many skipped blocks in the README (setup, servers, clusters, Docker, plugins, long training)
MAX_SKIPPED = 12

pytestmark = pytest.mark.timeout(900)

SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*(?:\((?P<reason>[^)]*)\))?\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
RUNNABLE = ("python", "bash", "console")
#: a block whose first line is ``# NAME.yaml`` (or .yml) is that file: written to the working directory
FILE_LINE = re.compile(r"^#\s*(?P<name>[\w./-]+\.ya?ml)\s*$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence (1-based)
    lang: str
    text: str
    skip: str | None  # the reason of a skip marker right above the block, "" for a marker without one

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` in order, each with the skip marker (if any) on the last
    non-blank line above its opening fence."""
    lines = path.read_text().splitlines()
    blocks, i, above = [], 0, ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                above = lines[i]
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{i + 1}: code block never closed"
        skip = SKIP.search(above)
        blocks.append(Block(path, i + 1, m["lang"], "\n".join(lines[i + 1:end]) + "\n",
                            None if skip is None else (skip["reason"] or "").strip()))
        above, i = "", end + 1
    return blocks


def commands(block: Block) -> list[tuple[dict[str, str], list[str]]]:
    """The ``xaiflow`` command lines of a bash/console block as (environment, argv), after the
    shell's rules this needs: comments, ``\\`` continuations, ``VAR=value`` prefixes and
    ``export VAR=value`` lines (kept for the later lines of the block). Other lines (``source``,
    ``make``, ...) are not run."""
    text = re.sub(r"\\\n", " ", block.text)
    env: dict[str, str] = {}
    found = []
    for line in text.splitlines():
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:] if "=" in w)
            continue
        prefix = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            prefix[key] = value
        if words[:1] == ["xaiflow"]:
            found.append(({**env, **prefix}, words[1:]))
    return found


def file_name(block: Block) -> str | None:
    """The file a YAML block is (its first line ``# NAME.yaml``), None for other blocks."""
    m = FILE_LINE.match(block.text.splitlines()[0]) if block.lang in ("yaml", "yml") and block.text.strip() else None
    return m["name"] if m else None


def run_block(block: Block, timings: list[tuple[str, float]]) -> None:
    """Run one block in the current working directory (a YAML file block: write the file); a
    failure names the Markdown file and line."""
    t0 = time.perf_counter()
    if file_name(block):
        target = Path(file_name(block))
        assert not target.is_absolute() and ".." not in target.parts, block.where
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text)
    elif block.lang == "python":
        namespace = {"__name__": "__readme__"}
        exec(compile(block.text, block.where, "exec"), namespace)  # noqa: S102 (running the README is the test)
        import matplotlib.pyplot as plt

        plt.close("all")
    else:
        cmds = commands(block)
        assert cmds, (f"{block.where}: a {block.lang} block without an `xaiflow` line: mark it "
                      "`<!-- readme-test: skip (reason) -->` or give it a command the test runs")
        for env, argv in cmds:
            t1 = time.perf_counter()
            with restored_environ():
                os.environ.update(env)
                res = run(*argv)
            print(f"  {block.where}: xaiflow {' '.join(argv)}: {time.perf_counter() - t1:.1f} s", flush=True)
            assert res.returncode == 0, f"{block.where}: `xaiflow {' '.join(argv)}` exit {res.returncode}:\n{res.stderr[-3000:]}"
            assert "Traceback" not in res.stderr, f"{block.where}: `xaiflow {' '.join(argv)}`:\n{res.stderr[-3000:]}"
    timings.append((block.where, time.perf_counter() - t0))


def test_blocks_skips_and_commands_are_read_as_a_shell_would(tmp_path):
    """The reader itself: markers, file blocks, comments, continuations, exports and prefixes."""
    doc = tmp_path / "doc.md"
    doc.write_text("""text
<!-- readme-test: skip (needs a GPU) -->
```bash
xaiflow attribute c.yaml -w ws.zarr
```
<!-- readme-test: skip -->
```python
print(1)
```
```yaml
# sub/run.yaml
datasets: []
```
```bash
source .venv/bin/activate
export XAIFLOW_PLUGINS=lab.methods   # a comment
XAIFLOW_X=1 xaiflow info \\
    -w "my ws.zarr"   # info
make demo
```
""")
    blocks = code_blocks(doc)
    assert [(b.lang, b.skip) for b in blocks] == [("bash", "needs a GPU"), ("python", ""), ("yaml", None), ("bash", None)]
    assert file_name(blocks[2]) == "sub/run.yaml" and file_name(blocks[0]) is None
    assert commands(blocks[3]) == [({"XAIFLOW_PLUGINS": "lab.methods", "XAIFLOW_X": "1"}, ["info", "-w", "my ws.zarr"])]
    with pytest.raises(AssertionError, match="without a reason"):
        check_blocks(doc)


# --- the small workspace --------------------------------------------------------------------------------

#: cheap parameters for the attribution methods the shipped configs name (not LIME's: the README's
#: `--methods grad_cam,lime` asks for its default parameters, which configs/uhcs.yaml's are)
CHEAP_METHOD_PARAMS = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
    "occlusion": {"window": 8, "stride": 8},
}


def small_config(name: str, size: int = 32) -> dict:
    """The shipped config ``name`` made small: the same dataset names, sources and columns, the
    same architecture (so the same model-id prefixes), but a few images per dataset at ``size`` px,
    one epoch, narrow layers and cheap method parameters. Folder sources keep their real root
    (``$XAIFLOW_UHCS_DIR``), resolved here since the copy lives in another folder."""
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    for ds in cfg["datasets"]:
        src = ds["source"]
        if src["kind"] == "folder":
            src["root"] = os.environ.get("XAIFLOW_UHCS_DIR", str(REPO.parent / "shared" / "data" / "uhcs"))
            src["max_per_group_label"] = 1
        if src["kind"] == "synthetic":
            src.update(size=[size, size], specimens_per_class=3, images_per_specimen=2)
            src["splits"] = {"train": 1, "val": 1, "test": 1}
            if "shortcut" in src:
                src["shortcut"]["size"] = 4
        ds["geometry"] = {**ds.get("geometry", {}), "size": [size, size]}
        ds["chunk_size"] = 16
    train = cfg.get("train")
    if train:
        widths = train.get("model_params", {}).get("widths", [16, 32, 64])
        train.update(epochs=1, patience=1, batch_size=16, device="cpu",
                     model_params={**train.get("model_params", {}), "widths": [8] * len(widths)})
        if (train.get("augment") or {}).get("crop"):
            train["augment"]["crop"] = size - 8
    for section in ("attribution",):
        if section in cfg:
            cfg[section]["device"] = "cpu"
            cfg[section]["methods"] = [_cheap(m) for m in cfg[section]["methods"]]
    for entry in cfg.get("compare", []):
        entry["methods"] = [_cheap(m) for m in entry.get("methods", [])]
    if "features" in cfg:
        for ex in cfg["features"]["extractors"]:
            params = ex.setdefault("params", {})
            if ex["name"] == "glcm":
                params["distances"] = [1, 2]
            if ex["name"] == "twopoint":
                params["r_max"] = size // 4
            if ex["name"] == "cnn" and "gram_channels" in params:
                params["gram_channels"] = 4
    if "studies" in cfg:  # the same studies, on the texture features with one fast classifier
        studies = cfg["studies"]
        studies["cv"].update(folds=3, classifiers=["logistic_regression"])
        texture = next(iter(studies["feature_sets"]))
        for study in ("generalization", "reduction"):
            if study in studies:
                studies[study]["feature_sets"] = [texture]
                studies[study].pop("classifiers", None)
        if "reduction" in studies:
            studies["reduction"].update(methods=["pca"], classifier="logistic_regression", ks=[2, 8])
    return cfg


def _cheap(method):
    name = method if isinstance(method, str) else method["name"]
    if name not in CHEAP_METHOD_PARAMS:
        return method
    entry = {"name": name} if isinstance(method, str) else dict(method)
    entry["params"] = {**entry.get("params", {}), **CHEAP_METHOD_PARAMS[name]}
    return entry


def write_micrographs(folder: Path, per_class: int = 4, per_specimen: int = 2, shape=(96, 128)) -> Path:
    """A lab's folder as docs/own-data.md describes it: ``images/*.png`` and ``labels.csv`` with the
    columns file,label,specimen,um_per_px; two classes told apart by their texture (stripes or
    blobs), ``per_class`` specimens each, two pixel sizes."""
    import numpy as np

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    rows = ["file,label,specimen,um_per_px"]
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for c, label in enumerate(("pearlite", "spheroidite")):
        for s in range(per_class):
            specimen = f"s{c}{s}"
            for i in range(per_specimen):
                noise = rng.normal(0, 25, shape)
                if label == "pearlite":
                    base = 128 + 80 * np.sin((xx + yy * rng.uniform(0.2, 1)) / rng.uniform(2, 4))
                else:
                    base = 60 + 150 * (np.sin(xx / 5 + rng.uniform(0, 6)) * np.sin(yy / 5) > 0.6)
                name = f"images/{specimen}_{i + 1}.png"
                Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / name)
                rows.append(f"{name},{label},{specimen},{0.12 if s % 2 else 0.45}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, client, uhcs_dir):
    """The working directory of the README's examples: small configs under ``configs/``, the
    quick-start workspace ``workspace/quickstart.zarr``, and ``local`` meaning the session's
    Dask cluster. Entered for the module's tests, left afterwards."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").mkdir()
    for name in ("quickstart", "uhcs", "uhcs_studies"):
        cfg = small_config(name)
        if name == "quickstart":  # the README's quick-start examples use the synthetic sets only
            cfg["datasets"] = [d for d in cfg["datasets"] if d["source"]["kind"] == "synthetic"]
        (root / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_micrographs(root / "my_micrographs")
    profiles = root / "cluster-profiles"
    profiles.mkdir()
    (profiles / "local.yaml").write_text(yaml.safe_dump({"kind": "address", "address": client.scheduler.address}))
    t0 = time.perf_counter()
    with working_directory(root, client), restored_environ():
        os.environ["XAIFLOW_CLUSTER_DIR"] = str(profiles)
        os.environ["MPLBACKEND"] = "Agg"
        ws = "workspace/quickstart.zarr"
        for argv in (["ingest", "configs/quickstart.yaml", "-w", ws],
                     ["train", "configs/quickstart.yaml", "-w", ws],
                     ["attribute", "configs/quickstart.yaml", "-w", ws]):
            t1 = time.perf_counter()
            res = run(*argv)
            print(f"  xaiflow {' '.join(argv)}: {time.perf_counter() - t1:.1f} s", flush=True)
            assert res.returncode == 0, f"xaiflow {' '.join(argv)}: {res.stderr[-3000:]}"
        print(f"quick-start workspace built in {time.perf_counter() - t0:.1f} s")
        yield root


@contextlib.contextmanager
def restored_environ():
    """``os.environ`` as it was, afterwards."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


@contextlib.contextmanager
def working_directory(path: Path, client):
    """``path`` as the working directory of this process and of the cluster's workers (relative
    paths in commands resolve there, as on a LocalCluster started in that folder)."""
    cwd, worker_cwd = os.getcwd(), client.run(os.getcwd)
    os.chdir(path)
    client.run(os.chdir, str(path))
    try:
        yield path
    finally:
        os.chdir(cwd)
        for address, before in worker_cwd.items():
            client.run(os.chdir, before, workers=[address])


def check_blocks(path: Path) -> tuple[list[Block], list[Block]]:
    """(blocks to run, skipped blocks) of ``path``, in order; a skip without a reason fails."""
    blocks = [b for b in code_blocks(path) if b.lang in RUNNABLE or file_name(b)]
    skipped = [b for b in blocks if b.skip is not None]
    assert all(b.skip for b in skipped), f"a skip marker without a reason: {[b.where for b in skipped if not b.skip]}"
    return [b for b in blocks if b.skip is None], skipped


def test_readme_blocks_run_as_written(folder):
    """Every python block and every `xaiflow` line of the README's bash/console blocks, in order."""
    to_run, skipped = check_blocks(README)
    print(f"README: {len(to_run)} blocks run, {len(skipped)} skipped:")
    for b in skipped:
        print(f"  {b.where}: {b.skip}")
    assert len(skipped) <= MAX_SKIPPED, "more README blocks skipped than the test allows: make them runnable"
    assert len(to_run) >= 10
    run_in_order(to_run)


def run_in_order(blocks: list[Block]) -> None:
    timings: list[tuple[str, float]] = []
    for block in blocks:
        run_block(block, timings)
    print("\n".join(f"  {where}: {s:.1f} s" for where, s in timings))


def test_own_data_walkthrough_runs_as_written(folder):
    """docs/own-data.md on the generated folder of PNGs with the CSV it describes. It runs where the
    README's short version ran (when that test ran first): its config spells out the defaults the
    README's leaves out, so ingest and training are reused, as the walkthrough says."""
    to_run, skipped = check_blocks(OWN_DATA)
    assert not skipped and [file_name(b) for b in to_run].count("my_data.yaml") == 1
    csv = next(b for b in code_blocks(OWN_DATA) if b.lang == "csv")
    assert csv.text.splitlines()[0] == "file,label,specimen,um_per_px"  # the columns write_micrographs writes
    run_in_order(to_run)
    reports = list((folder / "my.reports").glob("*/report.html"))
    assert len(reports) == 1, "one model: the README's config and the walkthrough's are the same"
    assert list((folder / "my.zarr" / "metrics" / "mine").iterdir())


def test_example_notebook_runs_and_draws_the_class_mean_maps(folder):
    """The code cells of examples/explore_workspace.ipynb, in order, from ``examples/`` beside the
    quick-start workspace (as in the repository); they import no xaiflow and draw the report's
    class-mean maps: one panel per (method, class with maps)."""
    import matplotlib.pyplot as plt

    notebook = json.loads(NOTEBOOK.read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert cells and not any(re.search(r"^\s*(import|from)\s+xaiflow", c, re.MULTILINE) for c in cells)
    assert all(c.get("outputs") or c["cell_type"] != "code" for c in notebook["cells"][-3:]), \
        "the notebook is committed with the outputs of a run"
    (folder / "examples").mkdir(exist_ok=True)
    namespace: dict = {"__name__": "__notebook__"}
    cwd = os.getcwd()
    os.chdir(folder / "examples")
    try:
        for i, code in enumerate(cells):
            exec(compile(code, f"{NOTEBOOK.name}[{i}]", "exec"), namespace)  # noqa: S102 (the notebook's own code)
        fig, methods, labels = namespace["fig"], namespace["methods"], namespace["labels"]
        panels = [ax for ax in fig.axes if ax.get_images()]
        assert len(panels) == len(methods) * len(labels) >= 4
        assert set(methods) == set(namespace["maps"].xai_method.values) and labels
        assert all(ax.get_images()[0].get_array().count() > 0 for ax in panels)  # drawn, not empty
    finally:
        os.chdir(cwd)
        plt.close("all")
