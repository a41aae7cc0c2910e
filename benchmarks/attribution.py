"""Attribution pipeline: engine overhead, LIME vs lime, Dask scaling, cost, memory, storage.

What: builds (or reuses) a small workspace of real UHCS micrographs (a specimen-stratified
subset ingested through configs/uhcs.yaml at --size px; synthetic micrographs, with a note,
when the UHCS folder is absent), trains small_cnn for a couple of epochs, then measures side
by side in one run and prints each ratio beside its target:

1. engine vs plain loop: per method, xaiflow's engine (the ``AttributionJob`` that
   ``engine.prepare`` plans, its ``job.run_chunk(chunk)`` called in this process with 1 torch
   thread: read the chunk from Zarr, attribute the planned targets, write maps and flags) vs
   the same Captum call (xaiflow's own method for LIME) in a loop over the same images held in
   memory (each batch standardised with ``to_input``, as both must), same batch sizes and
   parameters (the batching each method class chooses, as the engine asks it), the two
   interleaved chunk by chunk. In-process calls isolate task/IO/storage overhead from Dask
   scheduling, which section 3 measures (a worker runs exactly this ``job.run_chunk`` with 1
   thread). Target: throughput ratio >= 0.9;
2. xaiflow ``lime`` vs ``lime.lime_image.LimeImageExplainer.explain_instance`` (its defaults,
   same num_samples, our segmentation as segmentation_fn), the time split into segmentation,
   model evaluation and surrogate fit, and the weights compared. Target: >= 1.0 at equal weights;
3. 2 Dask worker processes x 1 thread (``xaiflow.jobs.run_job``: one task per chunk, the job
   shipped without its chunk list, then ``job.finalize``) vs the best single-process run (torch 1
   or 2 threads) of the same job on the same chunks (target >= 1.8x), and the per-chunk
   scheduling overhead (target < 1%);
4. each method's cost per image as a multiple of one forward+backward pass at its best batch
   (evaluations per image and images per pass as the method objects report them: ``cost``,
   ``evals_per_pass``);
5. peak RSS of a fresh process running one engine batch per method (what a worker needs),
   against the engine's estimate (images per pass x ``evaluation_bytes``);
6. float32 map storage (write MB/s, compression with zarr's default codec) and float16
   casts of raw maps vs ``storage: float16``'s scaled maps (subnormals make raw casts slow and lossy).

Why: the engine should cost little more than the computation it wraps, scale with workers,
and store maps cheaply; these numbers say where it does not.

How (about 10 minutes on 2 cores; sizes are options):

    .venv/bin/python benchmarks/attribution.py [--images 32] [--size 128]
        [--methods saliency,integrated_gradients,grad_cam,occlusion,lime,smoothgrad]
        [--workspace ws.zarr] [--uhcs-dir DIR]

A given --workspace is reused: the ingest and the model are kept, maps are recomputed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from distributed import get_task_stream, get_worker
from lime import lime_image
from torch import Tensor

from xaiflow import regions, schema, store
from xaiflow.attribution import METHODS, AttributionMethod, make_method
from xaiflow.attribution.engine import AttributionJob, Selection, default_batch_size, evaluation_bytes, prepare
from xaiflow.config import AttributionConfig, DatasetConfig, GeometryConfig, load_config
from xaiflow.device import set_torch_threads
from xaiflow.ingest import ingest_dataset
from xaiflow.jobs import Chunk, pending_chunks, run_job
from xaiflow.plugins import PluginSpec
from xaiflow.preprocess import to_input
from xaiflow.runtime import ClusterConfig, dask_client, map_tasks
from xaiflow.saliency import DONE, MAPS, METHOD, NONFINITE, TARGET, decode_maps, encode_maps, map_codec
from xaiflow.sources.synthetic import SyntheticConfig
from xaiflow.predict import predict_dataset
from xaiflow.training import train_model

REPO = Path(__file__).resolve().parents[1]
UHCS = Path(os.environ.get("XAIFLOW_UHCS_DIR") or REPO.parent / "shared/data/uhcs")
#: parameters of every benchmarked method (LIME's num_samples comes from --lime-samples)
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 32},
    "grad_cam": {},
    "occlusion": {"window": 16, "stride": 16},
    "lime": {"n_segments": 50},
    "smoothgrad": {"nt_samples": 16},
}
FLOOR_BATCHES = (1, 2, 4, 8, 16, 32)
NOOP_TASKS = 200  # no-op tasks whose mean round trip is reported beside the measured gaps


# ------------------------------------------------------------------ printing and timing

def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A GitHub-markdown table (pasted as is into benchmarks/README.md)."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def timed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def best_of(fn: Callable[[], Any], repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    return min(timed(fn, clock) for _ in range(repeats))


class Clock:
    """Wall and CPU seconds of the calls it runs. CPU time (every thread of this process) is what
    single-threaded comparisons are judged on: other processes competing for the cores stretch
    wall time, not this process's CPU time."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn()
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def interleaved(i: int, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Both results, in argument order; the calls run in swapped order when ``i`` is odd (cancels drift)."""
    if i % 2:
        b = second()
        return first(), b
    return first(), second()


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value < target
    return "met" if ok else "MISSED"


class Stopwatch:
    """Accumulates the time spent in wrapped callables, per bucket."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, bucket: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[bucket] = self.seconds.get(bucket, 0.0) + time.perf_counter() - start
        return inner


# ------------------------------------------------------------------ workspace, model, job

@dataclass
class Bench:
    workspace: str
    job: AttributionJob  # every benchmarked method, its chunks those of ``chunks``
    chunks: tuple[Chunk, ...]  # the chunks holding the first n images, those images selected (payload Selection)
    n: int
    model: torch.nn.Module  # the checkpoint's model as a worker holds it (job.model.cached("cpu"))
    pixels: np.ndarray  # the n images as stored (what a plain loop over the images holds in memory)
    x: Tensor  # the n images as network input
    targets: Tensor  # predicted classes (what the engine explains)
    batch: int  # images per attribution call (the engine's CPU default)
    batching: dict[str, dict[str, int]]  # per method: the batching parameter its class chooses for the engine
    methods: dict[str, AttributionMethod]  # per method: as the engine builds it (batching filled in)

    @property
    def params(self) -> dict[str, Any]:
        """Per method: its validated Params, batching filled in."""
        return {k: m.params for k, m in self.methods.items()}

    def method_job(self, name: str) -> AttributionJob:
        """The job restricted to one method (same chunks)."""
        return replace(self.job, methods=tuple(m for m in self.job.methods if m.key == name))

    def reset(self, name: str) -> None:
        """Clear the method's done flags so that the engine computes every map again."""
        root = zarr.open_group(self.workspace, path=self.job.group, mode="r+", zarr_format=3)
        root[DONE][:, self.column(name)] = False

    def column(self, name: str) -> int:
        """The method's position on the saliency group's ``xai_method`` axis."""
        root = zarr.open_group(self.workspace, path=self.job.group, mode="r", zarr_format=3)
        return list(store.strings(root[METHOD][:])).index(name)


def head(chunk: Chunk, k: int) -> Chunk:
    """The chunk with only its first ``k`` selected samples (one engine batch)."""
    sel = chunk.payload
    return replace(chunk, payload=Selection(sel.samples[:k], None if sel.targets is None else sel.targets[:k]))


def dataset_config(args: argparse.Namespace) -> DatasetConfig:
    geometry = GeometryConfig(size=(args.size, args.size), mode="resize")
    if (Path(args.uhcs_dir) / "metadata.csv").is_file():
        base = load_config(REPO / "configs/uhcs.yaml", data_dir=args.uhcs_dir).datasets[0]
        source = base.source.model_copy(update={"max_per_group_label": args.per_group})
        return base.model_copy(update={"name": f"uhcs{args.size}", "source": source, "geometry": geometry,
                                       "chunk_size": args.chunk})
    print(f"note: no UHCS data at {args.uhcs_dir} (set XAIFLOW_UHCS_DIR or --uhcs-dir); using synthetic micrographs")
    source = SyntheticConfig(specimens_per_class=6, images_per_specimen=max(4, math.ceil(args.images / 24)),
                             size=(args.size, args.size))
    return DatasetConfig(name=f"synthetic{args.size}", source=source, geometry=geometry, chunk_size=args.chunk)


def setup(args: argparse.Namespace) -> Bench:
    workspace = args.workspace or str(Path(tempfile.mkdtemp(prefix="xaiflow-bench-")) / "bench.zarr")
    ds = dataset_config(args)
    tick = time.perf_counter()
    ingested = ingest_dataset(ds, workspace)
    train = load_config(REPO / "configs/uhcs.yaml").train
    train = train.model_copy(update={"dataset": ds.name, "epochs": args.epochs, "threads": 2})
    trained = train_model(workspace, train)
    predict_dataset(workspace, trained["model_id"], ds.name, client=None)  # as `xaiflow train` does
    print(f"workspace {workspace}: {ds.name}, {ingested.n_samples} images at {args.size} px, chunks of "
          f"{args.chunk} ({ingested.status}); model {trained['model_id']} "
          f"({'reused' if trained['reused'] else f'{args.epochs} epochs'}, val balanced acc "
          f"{trained['val_balanced_accuracy']:.2f}); {time.perf_counter() - tick:.0f} s")

    names = list(dict.fromkeys([*args.methods, args.scaling_method]))
    lime_samples = {"lime": {"num_samples": args.lime_samples}}
    specs = [PluginSpec(name=m, params={**METHOD_PARAMS[m], **lime_samples.get(m, {})}) for m in names]
    cfg = AttributionConfig(dataset=ds.name, model=trained["model_id"], methods=specs, device="cpu")
    job = prepare(workspace, cfg, overwrite=True)
    n = min(args.images, ingested.n_samples)
    if n < args.images:
        print(f"note: the dataset has {ingested.n_samples} images; --images {args.images} reduced to {n}")
    if job.predictions is None:
        raise SystemExit(f"{workspace}: no stored predictions of {trained['model_id']}; the engine would predict")
    stored = np.asarray(zarr.open_group(workspace, path=job.predictions, mode="r", zarr_format=3)["predicted"][:])
    first_n = np.arange(ingested.n_samples) < n

    def payload(start: int, stop: int) -> Selection:  # as prepare() plans a chunk: the selected samples, their targets
        chosen = np.flatnonzero(first_n[start:stop]) + start
        return Selection(tuple(chosen.tolist()), tuple(int(t) for t in stored[chosen]))

    chunks = pending_chunks(first_n, args.chunk, payload)
    job = replace(job, chunks=chunks)

    set_torch_threads(1)
    model = job.model.cached("cpu")  # the worker's cached model, the very object job.run_chunk uses here
    images = zarr.open_group(workspace, path=schema.group_path(schema.IMAGES, ds.name), mode="r", zarr_format=3)
    pixels = np.asarray(images[schema.IMAGE][:n])
    x = to_input(pixels)
    with torch.no_grad():
        targets = torch.cat([model(x[i:i + 32]).argmax(1) for i in range(0, n, 32)])
    device = torch.device("cpu")
    batch = job.batch_size or default_batch_size(device)  # what job.run_chunk uses, chosen the same way
    per_eval = evaluation_bytes(model, job.model.sha256, (1, args.size, args.size), device)
    cap = job.max_evals_per_pass.get(device.type, job.max_evals_per_pass.get("cpu", 8))
    evals = int(max(1, min(cap, job.memory_budget_mb * 2**20 // per_eval)))
    batching, methods = {}, {}
    for m in job.methods:  # as the engine does: each method class turns the evaluation budget into its batching
        cls = METHODS.get(m.name)
        batching[m.key] = {} if cls.batch_param in m.params else cls.batching(batch, evals)
        methods[m.key] = make_method(m.name, model, **m.params, **batching[m.key])
    return Bench(workspace, job, chunks, n, model, pixels, x, targets, batch, batching, methods)


# ------------------------------------------------------------------ 1. engine vs plain loop

def _ref_saliency(model: torch.nn.Module, x: Tensor, t: Tensor, p: Any) -> Tensor:
    return Saliency(model).attribute(x, target=t, abs=p.abs)


def _ref_integrated_gradients(model: torch.nn.Module, x: Tensor, t: Tensor, p: Any) -> Tensor:
    return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=p.n_steps,
                                                method=p.method, internal_batch_size=p.internal_batch_size)


def _ref_grad_cam(model: Any, x: Tensor, t: Tensor, p: Any) -> Tensor:
    cam = LayerGradCam(model, model.get_layer(model.cam_layer)).attribute(x, target=t,
                                                                          relu_attributions=p.relu_attributions)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=p.interpolate_mode)


def _ref_occlusion(model: torch.nn.Module, x: Tensor, t: Tensor, p: Any) -> Tensor:
    c = x.shape[1]
    return Occlusion(model).attribute(x, sliding_window_shapes=(c, p.window, p.window), strides=(c, p.stride, p.stride),
                                      baselines=torch.zeros_like(x), target=t,
                                      perturbations_per_eval=p.perturbations_per_eval)


def _ref_smoothgrad(model: torch.nn.Module, x: Tensor, t: Tensor, p: Any) -> Tensor:
    tunnel = NoiseTunnel(Saliency(model))
    out = []
    for i in range(len(x)):  # one image at a time with the RNGs seeded, as xaiflow does
        xi = x[i:i + 1].detach().requires_grad_(True)
        value_range = float(xi.detach().max() - xi.detach().min())
        torch.manual_seed(p.seed)
        np.random.seed(p.seed)
        out.append(tunnel.attribute(xi, nt_type="smoothgrad", nt_samples=p.nt_samples,
                                    nt_samples_batch_size=p.nt_samples_batch_size, stdevs=p.stdevs * value_range,
                                    target=t[i:i + 1], abs=p.abs))
    return torch.cat(out)


#: the direct Captum call of each method; LIME (xaiflow's own algorithm) is called in memory
REFERENCES: dict[str, Callable[[Any, Tensor, Tensor, Any], Tensor]] = {
    "saliency": _ref_saliency, "integrated_gradients": _ref_integrated_gradients, "grad_cam": _ref_grad_cam,
    "occlusion": _ref_occlusion, "smoothgrad": _ref_smoothgrad,
}


def plain_maps(b: Bench, name: str, idx: np.ndarray) -> np.ndarray:
    p = b.params[name]
    if name in REFERENCES:
        def call(x: Tensor, t: Tensor) -> Tensor:
            return REFERENCES[name](b.model, x.detach().clone().requires_grad_(True), t, p).detach().sum(1)
    else:
        method = make_method(name, b.model, **p.model_dump())
        call = method.attribute
    # the plain loop prepares the network input from the images in memory, as any user loop must
    return np.concatenate([call(to_input(b.pixels[idx[i:i + b.batch]]), b.targets[idx[i:i + b.batch]]).numpy()
                           for i in range(0, len(idx), b.batch)])


def engine_overheads(b: Bench, name: str) -> dict[str, float]:
    """CPU seconds per chunk of the engine's steps around the computation, timed one by one."""
    ds_path = schema.group_path(schema.IMAGES, b.job.dataset)
    # targets are not a step: prepare() plans them from the stored predictions, and chunks carry them
    steps = {k: Clock() for k in ("model lookup (ModelEntry.cached: sha256 check)",
                                  "open arrays (cached per process), read the chunk and done flags",
                                  "write maps, targets, non-finite flags; then done flags")}
    model, read, io = steps.values()
    keys = [f"{b.job.group}/{v}" for v in (MAPS, TARGET, NONFINITE, DONE)]  # the method's column of each
    col = b.column(name)
    image_path = f"{ds_path}/{schema.IMAGE}"
    for chunk in b.chunks:
        region = (slice(chunk.start, chunk.stop), col)
        model(lambda: b.job.model.cached("cpu"))
        arrays = read(lambda: regions.open_arrays(b.workspace, [image_path, *keys]))  # as run_chunk: one call
        read(lambda: regions.read([arrays[image_path], arrays[keys[-1]]], region))
        values = regions.read([arrays[k] for k in keys], region)  # stored bytes: same cost as the engine's

        def write() -> None:  # what the engine does after the computation: maps + targets + flags, then done
            regions.write([arrays[k] for k in keys[:3]], region, values[:3])
            regions.write([arrays[keys[-1]]], region, values[3:])
        io(write)
    return {k: c.cpu / len(b.chunks) for k, c in steps.items()}


def section_engine(b: Bench, methods: list[str]) -> dict[str, dict[str, float]]:
    print(f"\n## 1. Engine (job.run_chunk in process, 1 torch thread) vs plain in-memory loop, {b.n} images, "
          f"{len(b.chunks)} chunks, batch {b.batch}; interleaved chunk by chunk")
    rows, out = [], {}
    root = zarr.open_group(b.workspace, path=b.job.group, mode="r", zarr_format=3)
    for name in methods:
        job = b.method_job(name)
        # warm-up of both paths (one-time costs: first calls, array handles; a worker pays them once per run)
        plain_maps(b, name, np.arange(min(b.batch, b.n)))
        b.reset(name)
        job.run_chunk(head(b.chunks[0], b.batch))
        b.reset(name)
        engine, plain = Clock(), Clock()
        maps = np.empty((b.n, *b.x.shape[2:]), np.float32)
        for i, chunk in enumerate(job.chunks):
            idx = np.array(chunk.payload.samples)
            result, maps[idx] = interleaved(i, partial(engine, partial(job.run_chunk, chunk)),
                                            partial(plain, partial(plain_maps, b, name, idx)))
            record = result["batching"][name]
            assert record["images_per_call"] == b.batch, record
            assert all(record[k] == v for k, v in b.batching[name].items()), record
        col = b.column(name)
        stored = np.asarray(root[MAPS][:b.n, col])
        rel = float(np.abs(stored - maps).max() / max(np.abs(maps).max(), 1e-30))
        same_targets = bool((np.asarray(root[TARGET][:b.n, col]) == b.targets.numpy()).all())
        out[name] = {"engine_s": engine.cpu, "plain_s": plain.cpu, "ratio": plain.cpu / engine.cpu,
                     "wall_ratio": plain.wall / engine.wall}
        rows.append([name, b.batching[name] or "-", f"{b.n / engine.wall:.2f}", f"{b.n / plain.wall:.2f}",
                     f"{plain.wall / engine.wall:.3f}", f"{plain.cpu / engine.cpu:.3f}", ">= 0.9",
                     verdict(plain.cpu / engine.cpu, 0.9), f"{1e3 * (engine.cpu - plain.cpu) / len(b.chunks):.0f}",
                     f"{rel:.1e}" + ("" if same_targets else " (targets differ)")])
    table("Throughput: engine vs plain loop (images/s, wall); ratio = engine throughput / plain throughput",
          ["method", "batching", "engine", "plain", "ratio (wall)", "ratio (CPU)", "target", "",
           "overhead CPU ms/chunk", "max rel diff"], rows)

    parts = engine_overheads(b, methods[0])
    per_chunk_plain = {m: out[m]["plain_s"] / len(b.chunks) for m in methods}
    table(f"Engine steps around the computation, timed separately (CPU ms per chunk of "
          f"{b.chunks[0].stop - b.chunks[0].start} images, and % of the plain computation per chunk)",
          ["step", "ms/chunk", *[f"% {m}" for m in methods]],
          [[k, f"{1e3 * v:.1f}", *[f"{100 * v / per_chunk_plain[m]:.1f}" for m in methods]] for k, v in parts.items()])
    return out


# ------------------------------------------------------------------ 2. LIME vs lime

def section_lime(b: Bench, n_images: int) -> dict[str, float]:
    p = b.params["lime"]
    method = make_method("lime", b.model, **p.model_dump())
    n_images = min(n_images, b.n)
    print(f"\n## 2. LIME: xaiflow `lime` vs lime {version('lime')} LimeImageExplainer.explain_instance, "
          f"{n_images} images, num_samples {p.num_samples}, slic n_segments {p.n_segments}")
    ours, theirs = Stopwatch(), Stopwatch()
    segment = method.segment  # lime gets the unwrapped one: its segmentation is timed in its own bucket
    method.segment = ours.wrap("segmentation", method.segment)  # type: ignore[method-assign]
    method._score = ours.wrap("model evaluation (+ perturbed images)", method._score)  # type: ignore[method-assign]
    ours_clock, lime_clock = Clock(), Clock()
    max_diff, n_superpixels = 0.0, []
    for i in range(n_images):
        image, label = b.x[i], int(b.targets[i])
        seed = np.random.RandomState(p.seed).randint(0, high=1000)  # lime's draw for its segmentation

        def run_ours() -> tuple[np.ndarray, np.ndarray]:
            return method.explain_image(image, label)

        def classifier_fn(rgb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                gray = np.ascontiguousarray(rgb[..., 0], dtype=np.float32)
                return torch.softmax(b.model(torch.from_numpy(gray)[:, None]), dim=1).numpy()

        def run_lime() -> Any:
            explainer = lime_image.LimeImageExplainer(kernel_width=p.kernel_width, random_state=p.seed)
            base = explainer.base
            base.explain_instance_with_data = theirs.wrap("surrogate fit", base.explain_instance_with_data)
            return explainer.explain_instance(
                image[0].numpy(), theirs.wrap("model evaluation", classifier_fn), labels=(label,), top_labels=None,
                num_samples=p.num_samples,
                segmentation_fn=theirs.wrap("segmentation", lambda _rgb: segment(image, seed=seed)))

        (segments, weights), explanation = interleaved(i, partial(ours_clock, run_ours), partial(lime_clock, run_lime))
        lime_weights = np.zeros_like(weights)
        for feature, w in explanation.local_exp[label]:
            lime_weights[feature] = w
        max_diff = max(max_diff, float(np.abs(weights - lime_weights).max()))
        n_superpixels.append(int(segments.max()) + 1)
    ours.seconds["surrogate fit (+ draws, distances)"] = ours_clock.wall - sum(ours.seconds.values())
    theirs.seconds["perturbed images (Python loop) + rest"] = lime_clock.wall - sum(theirs.seconds.values())
    ratio = lime_clock.cpu / ours_clock.cpu

    def split(sw: Stopwatch, total: float) -> str:
        return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sw.seconds.items())

    table(f"Seconds per image (superpixels per image: {min(n_superpixels)}-{max(n_superpixels)})",
          ["implementation", "images/pass", "wall s/image", "CPU s/image", "time split (wall)"],
          [["xaiflow lime", p.batch_size, f"{ours_clock.wall / n_images:.2f}", f"{ours_clock.cpu / n_images:.2f}",
            split(ours, ours_clock.wall)],
           ["lime (defaults)", 10, f"{lime_clock.wall / n_images:.2f}", f"{lime_clock.cpu / n_images:.2f}",
            split(theirs, lime_clock.wall)]])
    table("LIME targets", ["measure", "value", "target", ""],
          [["speed ratio (lime CPU time / xaiflow CPU time)",
            f"{ratio:.2f} (wall {lime_clock.wall / ours_clock.wall:.2f})", ">= 1.0", verdict(ratio, 1.0)],
           ["max abs weight difference", f"{max_diff:.1e}", "<= 1e-6", verdict(-max_diff, -1e-6)]])
    return {"ratio": ratio, "max_diff": max_diff}


# ------------------------------------------------------------------ 3. scaling on Dask

def _warm_worker(job: AttributionJob, shape: tuple[int, ...], batch: int, batching: dict[str, int]) -> None:
    """Load the model and run one batch of the method on a worker, without writing anything."""
    set_torch_threads(get_worker().state.nthreads)
    model = job.model.cached("cpu")
    evaluation_bytes(model, job.model.sha256, (1, *shape), torch.device("cpu"))
    m = job.methods[0]
    make_method(m.name, model, **m.params, **batching).attribute(torch.randn(batch, 1, *shape),
                                                                 torch.zeros(batch, dtype=torch.long))


def _noop(chunk: Chunk, job: AttributionJob) -> int:
    return chunk.index


def worker_gaps(intervals: list[tuple[str, float, float]]) -> list[float]:
    """Seconds a worker sat idle between consecutive compute intervals (worker, start, stop)."""
    out = []
    for worker in {w for w, _, _ in intervals}:
        mine = sorted((start, stop) for w, start, stop in intervals if w == worker)
        out.extend(nxt[0] - prev[1] for prev, nxt in zip(mine, mine[1:]))
    return out


def _process_chunks(chunks: tuple[Chunk, ...], job: AttributionJob, warm_only: bool = False) -> list[Any]:
    """In a plain (non-Dask) process with 1 torch thread: ``job.run_chunk`` over ``chunks``, their results."""
    set_torch_threads(1)
    job.model.cached("cpu")
    if warm_only:
        return []
    return [job.run_chunk(c) for c in chunks]


def cheapest_row(engine: dict[str, dict[str, float]], overhead: float, n_chunks: int) -> list[list[str]]:
    """The per-chunk scheduling overhead against a chunk of the cheapest method of section 1 (if it ran)."""
    if not engine:
        return []
    cheapest = min(engine, key=lambda m: engine[m]["engine_s"])
    chunk = engine[cheapest]["engine_s"] / n_chunks
    return [[f"same, vs a chunk of the cheapest method ({cheapest}, section 1)",
             f"{100 * overhead / chunk:.1f}% (/ {chunk:.2f} s)", "< 1%",
             verdict(overhead / chunk, 0.01, higher_is_better=False)]]


def section_scaling(b: Bench, name: str, engine: dict[str, dict[str, float]]) -> dict[str, float]:
    job = b.method_job(name)
    print(f"\n## 3. Scaling: {name}, {b.n} images in {len(job.chunks)} chunks; 2 Dask workers x 1 thread (run_job) "
          "vs one process running the same job.run_chunk calls; every run finalizes the job; runs ordered "
          "A B C C B A, means reported")
    walls: dict[str, list[float]] = {"plain, 1 thread": [], "plain, 2 threads": [], "Dask 2 workers x 1 thread": [],
                                     "2 plain processes x 1 thread, no Dask": []}
    plain_cpu: list[float] = []  # CPU seconds of the 1-thread runs
    worker_cpu: list[float] = []  # CPU seconds of both worker processes during a Dask run
    computes: list[list[float]] = []
    gaps: list[float] = []  # idle time of a worker between the end of one chunk and the start of its next
    noop_walls: list[float] = []
    noops = [job.chunks[i % len(job.chunks)] for i in range(NOOP_TASKS)]
    halves = [job.chunks[0::2], job.chunks[1::2]]
    shipped = job.shipped()  # what each chunk task receives: the job without its chunk list
    with dask_client(ClusterConfig(kind="local", n_workers=2, threads_per_worker=1)) as client, \
            ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(partial(_process_chunks, job=shipped, warm_only=True), halves))
        client.gather([client.submit(_warm_worker, shipped, tuple(b.x.shape[2:]), b.batch, b.batching[name],
                                     workers=[w], pure=False) for w in client.scheduler_info()["workers"]])

        def plain(threads: int) -> None:
            set_torch_threads(threads)
            b.reset(name)
            clock = Clock()
            clock(lambda: job.finalize([job.run_chunk(c) for c in job.chunks]))
            walls[f"plain, {threads} thread{'s' if threads > 1 else ''}"].append(clock.wall)
            if threads == 1:
                plain_cpu.append(clock.cpu)
            set_torch_threads(1)

        def dask() -> None:
            b.reset(name)
            before = client.run(time.process_time)
            with get_task_stream(client=client) as stream:
                walls["Dask 2 workers x 1 thread"].append(timed(lambda: run_job(job, client=client)))
            after = client.run(time.process_time)
            worker_cpu.append(sum(after[w] - before[w] for w in after))
            intervals = [(t["worker"], ss["start"], ss["stop"]) for t in stream.data for ss in t["startstops"]
                         if ss["action"] == "compute"]
            computes.append([stop - start for _, start, stop in intervals])
            gaps.extend(worker_gaps(intervals))
            noop_walls.append(timed(lambda: map_tasks(_noop, noops, client=client, job=shipped)))

        def processes() -> None:  # the machine's ceiling for two independent 1-thread processes
            b.reset(name)
            walls["2 plain processes x 1 thread, no Dask"].append(timed(lambda: job.finalize(
                [r for half in pool.map(partial(_process_chunks, job=shipped), halves) for r in half])))

        for run in (lambda: plain(1), lambda: plain(2), dask, processes,
                    processes, dask, lambda: plain(2), lambda: plain(1)):
            run()
    mean = {k: float(np.mean(v)) for k, v in walls.items()}
    best_plain_key = min(("plain, 1 thread", "plain, 2 threads"), key=mean.get)
    speedup = mean[best_plain_key] / mean["Dask 2 workers x 1 thread"]
    ceiling = mean[best_plain_key] / mean["2 plain processes x 1 thread, no Dask"]
    chunk_compute = float(np.mean([np.mean(c) for c in computes]))
    noop_per_chunk = float(np.median(noop_walls)) / NOOP_TASKS
    gap = float(np.mean(gaps)) if gaps else float("nan")
    busy = float(np.mean([sum(c) for c in computes])) / (2 * mean["Dask 2 workers x 1 thread"])
    solo_chunk = mean["plain, 1 thread"] / len(job.chunks)
    cpu_ratio = float(np.mean(plain_cpu) / np.mean(worker_cpu))
    table("Wall time of the whole run (s)", ["run", "seconds", "images/s", "speedup vs best plain"],
          [[k, f"{v:.2f}", f"{b.n / v:.2f}", f"{mean[best_plain_key] / v:.2f}x"] for k, v in mean.items()])
    table("Scaling targets", ["measure", "value", "target", ""], [
        [f"speedup, Dask vs best plain ({best_plain_key})", f"{speedup:.2f}x", ">= 1.8x", verdict(speedup, 1.8)],
        ["same for 2 plain processes without Dask (this machine's ceiling)", f"{ceiling:.2f}x", "-", ""],
        ["Dask / ceiling", f"{speedup / ceiling:.2f}", "-", ""],
        ["speedup, Dask vs plain with 1 thread (a worker's share)",
         f"{mean['plain, 1 thread'] / mean['Dask 2 workers x 1 thread']:.2f}x", "-", ""],
        ["scheduling overhead per chunk (a worker's idle gap between its chunks / chunk compute)",
         f"{100 * gap / chunk_compute:.2f}% ({1e3 * gap:.1f} ms / {chunk_compute:.2f} s)",
         "< 1%", verdict(gap / chunk_compute, 0.01, higher_is_better=False)],
        *cheapest_row(engine, gap, len(job.chunks)),
        [f"no-op task through map_tasks ({NOOP_TASKS} tasks, wall / task)", f"{1e3 * noop_per_chunk:.2f} ms", "-", ""],
        ["worker busy fraction (sum of task compute / (2 x wall))", f"{100 * busy:.1f}%", "-", ""],
        ["chunk compute on a worker vs alone in this process (1 thread)", f"{chunk_compute / solo_chunk:.2f}x",
         "-", ""],
        ["CPU seconds: plain 1 thread / both workers (same chunks)", f"{cpu_ratio:.2f}", "-", ""],
        ["expected on 2 idle cores: 2 x busy fraction x CPU ratio", f"{2 * busy * cpu_ratio:.2f}x", ">= 1.8x",
         verdict(2 * busy * cpu_ratio, 1.8)],
    ])
    return {"speedup": speedup, "overhead": gap / chunk_compute,
            "vs_one_thread": mean["plain, 1 thread"] / mean["Dask 2 workers x 1 thread"], "expected": 2 * busy * cpu_ratio,
            "ceiling": ceiling}


# ------------------------------------------------------------------ 4. cost in forward+backward passes

def section_cost(b: Bench, methods: list[str], engine: dict[str, dict[str, float]]) -> None:
    print(f"\n## 4. Cost per image as a multiple of one forward+backward pass (1 torch thread, {b.x.shape[-1]} px, "
          "CPU time; method costs from section 1)")
    floor = {}
    for batch in FLOOR_BATCHES:
        idx = torch.arange(batch) % b.n
        target = b.targets[idx, None]

        def step() -> None:
            x = b.x[idx].clone().requires_grad_(True)
            b.model(x).gather(1, target).sum().backward()
        step()
        floor[batch] = best_of(step, clock=time.process_time) / batch
    best = min(floor, key=floor.get)
    table("Forward+backward (to the input) per image, best of 3", ["batch", "ms/image", "vs best"],
          [[k, f"{1e3 * v:.1f}", f"{v / floor[best]:.2f}x"] for k, v in floor.items()])
    rows = []
    for name in methods:
        method = b.methods[name]  # as the engine builds it: its own cost and batching
        cost = method.cost(tuple(b.x.shape[1:]))
        n_eval, kind = cost.evaluations, cost.kind
        per_pass = method.evals_per_pass(b.batch)
        engine_x = engine[name]["engine_s"] / b.n / floor[best]
        plain_x = engine[name]["plain_s"] / b.n / floor[best]
        reasons = []
        if n_eval > 1:
            reasons.append(f"{n_eval} {kind} evaluations/image ({plain_x / n_eval:.2f}x floor each, plain)")
        if per_pass in floor and floor[per_pass] > 1.1 * floor[best]:
            reasons.append(f"{per_pass} images/pass cost {floor[per_pass] / floor[best]:.2f}x the best batch")
        if engine_x > 1.1 * plain_x:
            reasons.append(f"engine overhead x{engine_x / plain_x:.2f}")
        rows.append([name, f"{n_eval} {kind}", per_pass, f"{1e3 * engine[name]['engine_s'] / b.n:.1f}",
                     f"{engine_x:.2f}x", f"{plain_x:.2f}x", "; ".join(reasons) if engine_x > 1.5 else "-"])
    table(f"Cost per image vs the floor ({1e3 * floor[best]:.1f} ms/image at batch {best})",
          ["method", "evaluations/image", "images/pass", "engine ms/image", "x floor (engine)", "x floor (plain)",
           "why above 1.5x"], rows)


# ------------------------------------------------------------------ 5. peak memory

def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _peak_rss(job: AttributionJob, chunk: Chunk) -> dict[str, int]:
    """Runs in a fresh process: RSS before one engine call and its peak during the call (Linux VmHWM,
    reset just before the call, so import-time peaks do not count)."""
    set_torch_threads(1)
    job.model.cached("cpu")
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    job.run_chunk(chunk)
    return {"base": base * 1024, "peak": _status_kib("VmHWM") * 1024}


def section_memory(b: Bench, methods: list[str]) -> None:
    chunk = head(b.chunks[0], b.batch)
    print(f"\n## 5. Peak memory: one batch of {len(chunk.payload.samples)} images through job.run_chunk in a fresh "
          "process per method (1 torch thread; peak RSS from the kernel's high-water mark)")
    rows = []
    per_eval = evaluation_bytes(b.model, b.job.model.sha256, (1, *b.x.shape[2:]), torch.device("cpu"))
    for name in methods:
        b.reset(name)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rss = pool.submit(_peak_rss, b.method_job(name).shipped(), chunk).result()
        b.reset(name)
        per_pass = b.methods[name].evals_per_pass(b.batch)
        estimate = per_eval * per_pass
        rows.append([name, per_pass, f"{rss['base'] / 2**20:.0f}", f"{rss['peak'] / 2**20:.0f}",
                     f"{(rss['peak'] - rss['base']) / 2**20:.0f}", f"{estimate / 2**20:.0f}"])
    table(f"RSS (MiB); the engine's estimate is images/pass x evaluation_bytes ({per_eval / 2**20:.1f} MiB), "
          f"budget {b.job.memory_budget_mb} MiB",
          ["method", "images/pass", "before", "peak", "peak - before", "engine estimate"], rows)


# ------------------------------------------------------------------ 6. storage

def section_storage(b: Bench, methods: list[str]) -> dict[str, float]:
    root = zarr.open_group(b.workspace, path=b.job.group, mode="r", zarr_format=3)
    maps = {m: np.asarray(root[m][:b.n]) for m in methods}
    chunks = root[methods[0]].chunks
    print(f"\n## 6. Storage of {b.n} float32 maps per method, chunks {chunks}; codec: "
          f"{zarr_codecs(root[methods[0]])} (engine's arrays)")
    rows_write, rows_f16 = [], []
    slowdowns = []
    with tempfile.TemporaryDirectory(dir=Path(b.workspace).parent) as tmp:
        for name, m in maps.items():
            row = [name, f"{m.nbytes / 2**20:.1f}"]
            for label, codecs in (("engine", (map_codec(),)), ("default", "auto")):
                arrays = []

                def write() -> None:
                    arr = zarr.create_array(store=f"{tmp}/{name}-{label}{len(arrays)}.zarr", shape=m.shape,
                                            chunks=chunks, dtype="float32", compressors=codecs)
                    arr[:] = m
                    arrays.append(arr)
                seconds = best_of(write, 5)
                row += [f"{m.nbytes / 2**20 / seconds:.0f}", f"{m.nbytes / arrays[-1].nbytes_stored():.2f}"]
            rows_write.append(row)

            scaled, per_map = encode_maps(m)  # what `storage: float16` stores
            scale = per_map[:, None, None]
            raw_s = best_of(lambda: m.astype(np.float16), 5)
            scaled_s = best_of(lambda: encode_maps(m), 5)
            err_raw = float((np.abs(m.astype(np.float16).astype(np.float32) - m) / scale).max())
            err_scaled = float((np.abs(decode_maps(scaled, per_map) - m) / scale).max())
            slowdowns.append(raw_s / scaled_s)
            rows_f16.append([name, f"{100 * subnormal(m):.1f}", f"{100 * subnormal(scaled):.2f}",
                             f"{1e3 * raw_s:.1f}", f"{1e3 * scaled_s:.1f}", f"{raw_s / scaled_s:.1f}x",
                             f"{err_raw:.1e}", f"{err_scaled:.1e}"])
        default_codec = zarr_codecs(arrays[-1])
    table(f"float32 maps written with the engine's codec ({zarr_codecs(root[methods[0]])}) and zarr's default "
          f"({default_codec})", ["method", "MB", "engine: write MB/s", "engine: compression",
                                 "default: write MB/s", "default: compression"], rows_write)
    table("float16 cast: raw maps vs `storage: float16` (xaiflow.saliency.encode_maps: maps / per-map max |value|, "
          "scaling included in the time)",
          ["method", "raw subnormal %", "scaled subnormal %", "raw cast ms", "scale+cast ms", "raw / scaled",
           "raw max err", "scaled max err"], rows_f16)
    print("(max err: largest round-trip error relative to the map's max |value|; float16 subnormals are the "
          f"values below {2.0 ** -14:.1e} in magnitude)")
    return {"f16_slowdown": max(slowdowns)}


def subnormal(a: np.ndarray) -> float:
    """Fraction of the values that are non-zero but below float16's smallest normal number."""
    mag = np.abs(a)
    return float(((mag > 0) & (mag < 2.0 ** -14)).mean())


def zarr_codecs(arr: Any) -> str:
    def name(c: Any) -> str:
        if hasattr(c, "cname"):
            return f"{type(c).__name__}({c.cname.value}, {c.shuffle.value})"
        return type(c).__name__ + (f"(level={c.level})" if hasattr(c, "level") else "")
    names = [name(c) for c in arr.compressors]
    return ", ".join(names) or "none"


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images explained per method (default 32)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    ap.add_argument("--methods", default="saliency,integrated_gradients,grad_cam,occlusion,lime,smoothgrad",
                    help=f"comma-separated subset of {', '.join(METHOD_PARAMS)}")
    ap.add_argument("--workspace", help="workspace .zarr to build or reuse (default: a new temporary directory)")
    ap.add_argument("--uhcs-dir", default=str(UHCS), help="UHCS data folder (default: $XAIFLOW_UHCS_DIR or "
                                                            "../shared/data/uhcs); synthetic images when absent")
    ap.add_argument("--chunk", type=int, default=16, help="images per Zarr chunk = per Dask task (default 16, "
                    "as configs/quickstart.yaml; configs/uhcs.yaml uses 32)")
    ap.add_argument("--per-group", type=int, default=2, help="UHCS images kept per (specimen, class) (default 2)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the benchmark model (default 2)")
    ap.add_argument("--lime-samples", type=int, default=200, help="LIME num_samples (default 200)")
    ap.add_argument("--lime-images", type=int, default=3, help="images of the lime comparison (default 3)")
    ap.add_argument("--scaling-method", default="integrated_gradients", choices=list(METHOD_PARAMS),
                    help="method of the Dask scaling run (default integrated_gradients)")
    ap.add_argument("--sections", default="1,2,3,4,5,6",
                    help="comma-separated sections to run (default all; 4 needs 1): e.g. --sections 3 to repeat "
                         "the scaling run on an idle machine")
    args = ap.parse_args()
    sections = {int(x) for x in args.sections.split(",") if x.strip()}
    if 4 in sections and 1 not in sections:
        ap.error("section 4 (cost per image) uses the engine timings of section 1: add 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHOD_PARAMS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_PARAMS)}")

    start = time.perf_counter()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    def run(fn: Callable[..., Any], *fn_args: Any) -> Any:
        tick = time.perf_counter()
        out = fn(*fn_args)
        print(f"[{time.perf_counter() - tick:.0f} s, load average {os.getloadavg()[0]:.1f}]")
        return out

    b = setup(args)
    engine = run(section_engine, b, args.methods) if 1 in sections else {}
    lime = run(section_lime, b, args.lime_images) if 2 in sections and "lime" in args.methods else None
    scaling = run(section_scaling, b, args.scaling_method, engine) if 3 in sections else None
    if 4 in sections:
        run(section_cost, b, args.methods, engine)
    if 6 in sections:  # before section 5, whose partial chunks leave NaN maps
        storage = run(section_storage, b, args.methods)
    if 5 in sections:
        run(section_memory, b, args.methods)

    rows = [[f"engine/plain throughput, {m}", f"{r['ratio']:.3f} (wall {r['wall_ratio']:.3f})", ">= 0.9",
             verdict(r["ratio"], 0.9)] for m, r in engine.items()]
    if lime is not None:
        rows += [["LIME speed, lime / xaiflow (CPU time)", f"{lime['ratio']:.2f}", ">= 1.0",
                  verdict(lime["ratio"], 1.0)],
                 ["LIME weights, max abs difference", f"{lime['max_diff']:.1e}", "<= 1e-6",
                  verdict(-lime["max_diff"], -1e-6)]]
    if scaling is not None:
        rows += [[f"Dask 2x1 vs best plain ({args.scaling_method})", f"{scaling['speedup']:.2f}x", ">= 1.8x",
                  verdict(scaling["speedup"], 1.8)],
                 ["Dask 2x1 vs plain with 1 thread (a worker's share)", f"{scaling['vs_one_thread']:.2f}x", "-", ""],
                 ["same, 2 plain processes without Dask (machine ceiling)", f"{scaling['ceiling']:.2f}x", "-", ""],
                 ["same, expected on 2 idle cores (CPU-time model)", f"{scaling['expected']:.2f}x", ">= 1.8x",
                  verdict(scaling["expected"], 1.8)],
                 ["scheduling overhead per chunk", f"{100 * scaling['overhead']:.2f}%", "< 1%",
                  verdict(scaling["overhead"], 0.01, higher_is_better=False)]]
    if 6 in sections:
        rows.append(["float16 cast, raw / scaled-first time (worst method)", f"{storage['f16_slowdown']:.1f}x", "-", ""])
    table(f"Summary ({time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} at the end)",
          ["measure", "value", "target", ""], rows)


if __name__ == "__main__":
    main()
