"""HTML report and shortcut command on a real tiny workspace: sections, embedded figures, metric
spread, and clear errors (unknown model, no saliency, method not computed)."""

import json
import re

import numpy as np
import pytest
from cli_run import run
from conftest import ingest_synthetic, train_tiny

from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.metrics.runner import run_metrics
from xaiflow.predict import predict_dataset
from xaiflow.models.catalog import ModelNotFoundError
from xaiflow.report import ReportError, metric_table, write_report

pytestmark = pytest.mark.slow  # trains, attributes, computes metrics and renders reports


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("report") / "ws.zarr"
    ingest_synthetic(ws, client, images_per_specimen=2, shortcut={"probability": 0.8})
    model_id = train_tiny(ws, model_params={"widths": [8, 8]})
    run_attribution(ws, AttributionConfig(dataset="syn", model=model_id, device="cpu",
                                          methods=["saliency", "grad_cam"]), client=client)
    return ws, model_id


def test_report_sections_figures_and_metrics(tiny, client, tmp_path):
    ws, model = tiny
    path = write_report(ws, model, out=tmp_path / "r1")
    page = path.read_text()
    for title in ("Shortcut verdict", "Example overlays", "Class-mean maps", "Metrics", "Method agreement",
                  "Mask agreement"):
        assert title in page
    assert "Metrics were not computed" in page
    assert f"Not computed: <code>xaiflow uncertainty -w {ws} -m {model}</code>" in page
    for command in ("adversarial", "concepts", "importance", "probe"):
        assert f"Not computed: <code>xaiflow {command} -w {ws} -m {model}" in page
    # confusion, training curves, examples, misclassified, means, 2 agreement, mask
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 8
    assert "PNG files beside it" not in page  # under the default size limit: everything embedded
    assert {"examples.png", "class_means.png", "mask_ratio.png", "shortcut.json"} <= {p.name for p in path.parent.iterdir()}
    verdict = json.loads((path.parent / "shortcut.json").read_text())["verdict"]
    assert f"class='verdict {verdict}'" in page

    run_metrics(ws, "syn", model, ["sparseness", "entropy"], device="cpu", client=client)
    rows = metric_table(ws, "syn", model)
    sparse = next(r for r in rows if r["method"] == "saliency" and r["metric"] == "sparseness")
    assert sparse["n"] == 18 and sparse["p10"] <= sparse["median"] <= sparse["p90"] and np.isfinite(sparse["std"])
    predict_dataset(ws, model, "syn", client=client)  # class probabilities for the per-image pages
    path = write_report(ws, model, out=tmp_path / "r2")
    page = path.read_text()
    assert "Metrics were not computed" not in page and f"{sparse['mean']:.3f} ± {sparse['std']:.3f}" in page
    assert page.index("<h2>Conclusion</h2>") < page.index("<table>")  # the conclusion comes first
    # per-image pages: one per shown sample, linked from its row, linking back to it
    hrefs = set(re.findall(r"<a href='(samples/[^']+\.html)'>", page))
    assert 3 <= len(hrefs) <= 40 and {p.name for p in (path.parent / "samples").glob("*.html")} == \
        {h.split("/")[1] for h in hrefs}
    for href in hrefs:
        sample_page = (path.parent / href).read_text()
        back = re.search(r"<a href='\.\./report\.html#([^']+)'>", sample_page).group(1)
        assert f"<tr id='{back}'>" in page
        for src in re.findall(r"<img alt='[^']*' src='([^']+)'>", sample_page):
            assert (path.parent / "samples" / src).stat().st_size > 0
        assert "<h3>Class probabilities</h3><table>" in sample_page and "pixel size" in sample_page
        assert "sparseness" in sample_page and "um_per_px" not in sample_page
    for raw in ("um_per_px", "(0.0316, 0.1]", "n_with"):  # variable names do not leak into the page
        assert raw not in page.replace("xaiflow.report", "")


def test_report_errors(tiny):
    ws, model = tiny
    with pytest.raises(ModelNotFoundError, match="no trained model 'nope'"):
        write_report(ws, "nope")
    with pytest.raises(ReportError, match=r"method\(s\) \['lime'\] not computed"):
        write_report(ws, model, methods=["lime"])
    with pytest.raises(ReportError, match="no saliency computed for dataset 'other'"):
        write_report(ws, model, dataset="other")


@pytest.mark.timeout(300)  # the commands run in this process: no subprocess timeout
def test_cli_report_and_shortcut(tiny, tmp_path):
    ws, model = tiny
    res = run("report", "-w", str(ws), "--model", model, "--out", str(tmp_path / "cli"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cli" / "report.html").is_file()
    js = run("shortcut", "-w", str(ws), "--model", model, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["kind"] == "masks" and data["verdict"] in {"shortcut", "structure", "inconclusive"}
    bad = run("report", "-w", str(ws), "--model", "nope")
    assert bad.returncode == 2 and "no trained model 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_report_uncertainty_and_adversarial_sections(tiny, client, tmp_path):
    from xaiflow.adversarial import AttackSettings, inspect_adversarial
    from xaiflow.uncertainty import estimate_uncertainty

    ws, model = tiny
    estimate_uncertainty(ws, [model], "syn", passes=4, client=client)
    inspect_adversarial(ws, model, "syn", attack=AttackSettings(epsilon=1.0, steps=4, step_size=0.5), split=None,
                        max_samples=6, client=client)
    page = write_report(ws, model, out=tmp_path / "r3").read_text()
    section = page[page.index("<h2>7. Uncertainty</h2>"):page.index("<h2>8. Concepts (TCAV)</h2>")]
    assert f"uncertainty/syn/{model} (mc dropout, 4 draws per sample, test split)" in section
    assert re.search(r"expected calibration error \d\.\d{3}: the model is ", section)
    assert "reliability diagram" in section
    adversarial = page[page.index("<h2>11. Adversarial inspection</h2>"):]
    assert "6 samples attacked (epsilon 1, PGD 4 steps)" in adversarial and "fisher trace" in adversarial
    assert (tmp_path / "r3" / "reliability.png").is_file() and (tmp_path / "r3" / "adversarial_scores.png").is_file()


def test_report_model_section_misclassified_and_linked_figures(tiny, tmp_path):
    ws, model = tiny
    path = write_report(ws, model, out=tmp_path / "r4", embed_limit=1)  # every figure over the limit
    page = path.read_text()
    model_part = page[page.index("<h2>Model</h2>"):page.index("<h2>1. Shortcut verdict</h2>")]
    assert "balanced accuracy" in model_part and "majority-class baseline" in model_part
    assert "src='confusion.png'" in model_part and "src='training_curves.png'" in model_part
    assert "<h3>Misclassified examples</h3>" in page
    assert re.search(r"\d+ of the 18 explained samples are misclassified; \d shown", page)
    assert "src='misclassified.png'" in page
    # linked, not embedded: every figure is a file beside the page, and the page says so
    assert "data:image/png;base64" not in page and "figure(s) are shown from the PNG files beside it" in page
    sources = re.findall(r"<img alt='[^']*' src='([^']+)'", page)
    assert len(sources) >= 8 and all((path.parent / s).is_file() for s in sources)


def test_fit_page_links_largest_first(tmp_path):
    import base64

    from xaiflow.report_embed import fit_page

    (tmp_path / "big.png").write_bytes(b"B" * 3000)
    (tmp_path / "small.png").write_bytes(b"s" * 30)
    img = "".join(f"<img src='data:image/png;base64,{base64.b64encode(d).decode()}'>"
                  for d in (b"B" * 3000, b"s" * 30))
    unknown = f"<img src='data:image/png;base64,{base64.b64encode(b'x' * 9000).decode()}'>"  # no file: stays
    page, linked = fit_page(img + unknown, tmp_path, limit=13_000)
    assert linked == ["big.png"] and "src='big.png'" in page and "src='small.png'" not in page
    assert page.count("data:image/png;base64") == 2
    assert fit_page(img, tmp_path, limit=10**6) == (img, [])


def test_model_section_degrades_and_shared_scale(tiny, tmp_path):
    import shutil

    from xaiflow import store
    from xaiflow.aggregate import group_maps
    from xaiflow.figures import group_map_figure
    from xaiflow.report import _img, _table
    from xaiflow.report_model import model_html, pick_misclassified
    from xaiflow.saliency import open_saliency

    ws, model = tiny
    # a model trained before the history and the confusion matrices were stored: sentences, no figures
    copy = tmp_path / "old.zarr"
    shutil.copytree(ws, copy)
    shutil.copytree(store.models_dir(ws), store.models_dir(copy))
    folder = store.models_dir(copy) / model
    (folder / "history.json").unlink()
    metrics = json.loads((folder / "metrics.json").read_text())
    for split in ("val", "test"):
        metrics[split].pop("confusion")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "old"
    out.mkdir()
    section = model_html(str(copy), model, out, _table, _img)
    assert "No training history stored with this model" in section and "No confusion matrix stored" in section
    assert "balanced accuracy" in section and not list(out.glob("*.png"))
    # ... and without masks (the metadata path): the whole report is written, its bins in um/px
    store.delete_group(copy, "masks/syn")
    um = float(open_saliency(copy, "syn", model)["source_um_per_px"].values[0])  # what the check bins by default
    page = write_report(copy, model, out=tmp_path / "old_report", bins=[um / 2, um * 2]).read_text()
    assert "No training history stored with this model" in page and "<h2>Model</h2>" in page
    assert "Dependence on pixel size of the source image (um/px)" in page
    assert "Mean maps per pixel size of the source image (um/px) bin" in page
    assert f"<td>{um / 2:.3g}–{um * 2:.3g} um/px</td>" in page and f"({um / 2:.3g}, {um * 2:.3g}]" not in page

    ds = open_saliency(ws, "syn", model)
    labels = ds["label_index"].values
    picked = pick_misclassified(ds, (labels + 1) % 3, 4)  # every sample wrong: test first, one per class first
    ids = store.strings(ds["sample"].values).tolist()
    splits = dict(zip(ids, store.strings(ds["split"].values).tolist(), strict=True))
    by_class = dict(zip(ids, labels.tolist(), strict=True))
    assert len(picked) == 4 and len({by_class[s] for s in picked[:3]}) == 3
    assert splits[picked[0]] == "test"
    assert pick_misclassified(ds, labels, 4) == []

    maps = group_maps(ds, by="label").compute()
    _, limits = group_map_figure(maps, "t", shared_scale=True)
    for method in ("saliency", "grad_cam"):
        per_class = {limits[(str(g), method)] for g in maps["label"].values}
        assert len(per_class) == 1 and next(iter(per_class))[0] == 0.0
        pixels = maps.sizes["y"] * maps.sizes["x"]  # shown in multiples of a uniform map
        assert next(iter(per_class))[1] == pytest.approx(float(maps.sel(xai_method=method).max()) * pixels)
    _, own = group_map_figure(maps, "t")
    assert len({own[(str(g), "saliency")] for g in maps["label"].values}) > 1  # own scale per panel otherwise


def test_bin_labels_in_units():
    from xaiflow.report_units import bin_label, quantity

    assert bin_label("(0.049, 0.2]", "um_per_px", [0.05, 0.2, 1.0]) == "0.05–0.2 um/px"  # pandas' include_lowest
    assert bin_label("(0.2, 1.0]", "um_per_px", [0.05, 0.2, 1.0]) == "0.2–1 um/px"
    assert bin_label("(0.0316, 0.1]", "magnification") == "0.0316–0.1 x"
    assert bin_label("(1.0, 2.0]", "temperature") == "1–2" and bin_label("steel", "um_per_px") == "steel"
    assert quantity("um_per_px") == "pixel size (um/px)" and quantity("temperature") == "temperature"


# ---------------------------------------------------------------- scale bars, per-image pages, metric table, titles


def _white_runs(path):
    """Per pixel row of a rendered PNG, the longest run of white pixels (the scale bar's fill)."""
    from PIL import Image

    white = np.asarray(Image.open(path).convert("L")) >= 250
    runs = np.zeros(len(white), int)
    for r, row in enumerate(white):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        runs[r] = int((edges[1::2] - edges[::2]).max()) if len(edges) else 0
    return runs


def test_scale_bar_round_length_drawn_in_the_darkest_corner(tmp_path):
    from xaiflow.figures import length_label, nice_length
    from xaiflow.report_samples import micrograph_figure

    assert [nice_length(t) for t in (4.7, 1.3, 0.03, 17.0, 380.0)] == [5, 1, 0.02, 20, 500]
    assert length_label(0.5) == "500 nm" and length_label(20) == "20 µm" and length_label(2000) == "2 mm"
    image = np.full((64, 64), 40, np.uint8)
    path, k = micrograph_figure(image, 0.37, tmp_path / "plain.png")  # 64 px x 0.37 um: a 5 um bar (13.5 px)
    assert k == 6  # enlarged to at least 384 screen pixels
    runs = _white_runs(path)
    bar_rows = np.flatnonzero(runs >= 0.8 * 13.5 * k)
    assert len(bar_rows) >= 2 and abs(runs[bar_rows].max() - 5 / 0.37 * k) <= 2 * k  # the bar is 5 um long
    assert bar_rows.min() > 0.8 * 64 * k  # at the bottom
    # a bright data bar in the bottom corners: the scale bar goes to the top instead
    image[48:, :] = 255
    runs = _white_runs(micrograph_figure(image, 0.37, tmp_path / "databar.png")[0])
    bar_rows = np.flatnonzero((runs >= 0.8 * 13.5 * k) & (runs <= 1.3 * 13.5 * k))
    assert len(bar_rows) and bar_rows.max() < 0.3 * 64 * k
    # no pixel size: no bar
    assert _white_runs(micrograph_figure(np.zeros((64, 64), np.uint8), float("nan"), tmp_path / "none.png")[0]).max() == 0


def test_scale_bar_helper_returns_its_length():
    from matplotlib.figure import Figure

    from xaiflow.figures import scale_bar

    ax = Figure().subplots()
    um, px = scale_bar(ax, 0.05, 400, 300)
    assert um == 5 and px == pytest.approx(100)  # 400 px x 0.05 um/px = 20 um; a fifth: 4 um -> 5 um
    assert scale_bar(ax, float("nan"), 400, 300) is None and scale_bar(ax, 0.0, 400, 300) is None


def test_metric_table_one_row_per_method_flags_random(tmp_path):
    """A constructed metrics group: 'good' beats its random order and chance level, 'random' is no better;
    one row per method, every metric a column, the references once in the headers."""
    import xarray as xr

    from xaiflow.faithfulness_report import faithfulness_section, metric_summary

    rng = np.random.default_rng(0)
    n = 30
    names = ["road", "road_random", "pointing_game", "pointing_game_chance", "sparseness"]
    value = np.zeros((n, 2, len(names)), np.float32)
    reference = rng.normal(0.0, 0.05, (n, 2))
    value[:, :, 1] = reference
    value[:, 0, 0] = reference[:, 0] + 0.3 + rng.normal(0, 0.05, n)  # good: well above its random order
    value[:, 1, 0] = reference[:, 1] + rng.normal(0, 0.05, n)  # random: the same as random orders
    value[:, :, 3] = 0.2
    value[:, 0, 2] = 0.9
    value[:, 1, 2] = rng.binomial(1, 0.2, n)
    value[:, :, 4] = rng.uniform(0.2, 0.4, (n, 2))
    outputs = {"road": {"key": "road", "higher_is_better": True, "dim": None, "description": "LeRF - MoRF"},
               "road_random": {"key": "road", "higher_is_better": None, "dim": None},
               "pointing_game": {"key": "pointing_game", "higher_is_better": True, "dim": None,
                                 "chance": "pointing_game_chance"},
               "pointing_game_chance": {"key": "pointing_game", "higher_is_better": None, "dim": None,
                                        "chance_of": "pointing_game"},
               "sparseness": {"key": "sparseness", "higher_is_better": True, "dim": None}}
    ds = xr.Dataset({"value": (("sample", "xai_method", "metric"), value),
                     "done": (("sample", "xai_method", "metric"), np.ones(value.shape, bool))},
                    coords={"sample": np.array([f"s{i}" for i in range(n)], object),
                            "xai_method": np.array(["good", "random"], object), "metric": np.array(names, object)},
                    attrs={"outputs": outputs})
    ds.to_zarr(tmp_path / "ws.zarr", group="metrics/syn/m", consolidated=False, zarr_format=3)
    rows = {(r.metric, r.method): r for r in metric_summary(tmp_path / "ws.zarr", "syn", "m")}
    assert {m for m, _ in rows} == {"road", "pointing_game", "sparseness"}
    assert rows["road", "good"].beats_random and rows["pointing_game", "good"].beats_random
    assert rows["road", "random"].beats_random is False and rows["pointing_game", "random"].beats_random is False
    assert rows["sparseness", "good"].beats_random is None and rows["pointing_game", "good"].reference == "chance"
    page, covered = faithfulness_section(tmp_path / "ws.zarr", "syn", "m", tmp_path)
    table = page[page.index("<table class='metrics'>"):page.index("</table>")]
    body = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", table)
    assert [method for method, _ in body] == ["good", "random"]  # one row per method, no baseline rows
    cells = dict(body)
    assert "≈ random" in cells["random"] and "≈ chance" in cells["random"]
    assert "≈" not in cells["good"] and "no reference" in table
    assert table.count("random order <i>") == 1 and table.count("chance <i>") == 1  # each reference once
    assert covered == {"road", "road_random", "pointing_game", "pointing_game_chance", "sparseness"}


def _overlapping_texts(fig):
    """Pairs of visible texts of ``fig`` whose rendered boxes intersect."""
    from itertools import combinations

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()]
    return [(a, b) for (a, ba), (b, bb) in combinations(boxes, 2) if ba.overlaps(bb)]


def test_long_titles_do_not_overlap(tiny):
    from xaiflow.aggregate import group_maps
    from xaiflow.figures import group_map_figure, saliency_figure, sample_names
    from xaiflow.saliency import open_saliency

    from matplotlib.figure import Figure

    unwrapped = Figure(figsize=(4, 2))
    for ax in unwrapped.subplots(1, 2):
        ax.set_title("a title much too long for its panel", fontsize=9)
    assert _overlapping_texts(unwrapped)  # the check sees overlapping titles
    ws, model = tiny
    ds = open_saliency(ws, "syn", model)
    ids = sample_names(ds)[:2].tolist()
    notes = {i: "predicted: a class with a very long name written out in full (wrong)" for i in ids}
    assert _overlapping_texts(saliency_figure(ds, ids, notes)) == []
    maps = group_maps(ds, by="label").compute()
    maps = maps.assign_coords(label=[f"{c} in the pixel size bin 0.0316–0.1 um/px" for c in maps["label"].values])
    fig, _ = group_map_figure(maps, "a long title " * 12, shared_scale=True)
    assert _overlapping_texts(fig) == []


def test_page_names_are_safe_and_distinct():
    from xaiflow.report_samples import page_name

    names = [page_name(s) for s in ("a/b c", "a_b_c", "../x", "ok-1.png", "é", "")]
    assert names[3] == "ok-1.png" and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n) and ".." not in n for n in names)
