"""Scale benchmark: the same chunked stages at growing N, through the CLI and through Prefect flows.

For each N (synthetic 64 px images, chunks of 64) on one machine, every stage on a fresh Dask
cluster of separate processes (``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1``,
the address handed to ``--cluster``), so the scheduler, the workers, the client and the Prefect
server are measured apart:

1. ``xaiflow ingest``, and ``xaiflow train`` (a tiny CNN, one epoch: the model is not the point);
2. Grad-CAM maps of every image (the cheap method), twice on copies of one workspace, side by
   side: ``xaiflow attribute`` and the Prefect attribute flow against a real local Prefect server,
   whose chunk groups are Prefect tasks (xaiflow_flows/jobs.py);
3. Integrated gradients (the expensive method, 16 steps) for the ``test`` split (15%);
4. queries with the Python API: the per-class and per-bin means of Grad-CAM over all N maps
   against a raw zarr read of the same bytes (shard by shard), and the method agreement over the
   samples with both maps against a raw read of theirs; with peak traced memory.

It prints per stage: seconds, images/s, ms per image and its ratio to the previous N, peak RSS
of client, scheduler, workers (sum) and Prefect server; the Prefect task runs and database
growth; store bytes and files (per 10^4 images); the flow/CLI throughput ratio end to end and at
the margin (the extra images between two N over the extra seconds: the per-image cost of
orchestration without the fixed start-up of a run).

    .venv/bin/python benchmarks/scale.py --n 1000 10000 100000 [--work /tmp/scale]

Every N makes a workspace of its own under ``--work`` (removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploy.local import free_port, prefect_server
from xaiflow import schema, store

CLASSES = ("particles", "lamellae", "network", "needles")
FLOW = """
import json, sys
from xaiflow_flows.attribute import attribute_flow
config, ws, cluster = sys.argv[1:]
state = attribute_flow(config_path=config, workspace=ws, cluster=cluster, return_state=True)
print(json.dumps({"flow_run": str(state.state_details.flow_run_id), **state.result()}))
"""
#: the expensive method, on the test split
EXPENSIVE = {"name": "integrated_gradients", "params": {"n_steps": 16}}


def run_config(path: Path, n: int, size: int, chunk: int, methods: list, splits: list[str]) -> Path:
    """A run config of ``n`` synthetic images (4 classes, 8 per specimen), a tiny CNN and ``methods``."""
    per_class = max(1, n // (len(CLASSES) * 8))
    path.write_text(yaml.safe_dump({
        "datasets": [{"name": "syn", "chunk_size": chunk, "geometry": {"size": [size, size]},
                      "source": {"kind": "synthetic", "classes": list(CLASSES), "specimens_per_class": per_class,
                                 "images_per_specimen": 8, "size": [size, size]}}],
        "train": {"dataset": "syn", "epochs": 1, "model_params": {"widths": [4, 8]}, "device": "cpu",
                  "batch_size": 64},
        "attribution": {"dataset": "syn", "device": "cpu", "splits": splits, "methods": methods}}))
    return path


def rss_mb(pid: int, tree: bool = False) -> float:
    """Resident memory (MB) of a process, or of it and all its descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if tree else [proc]
        total = 0.0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20
    except psutil.NoSuchProcess:
        return 0.0


class Peaks:
    """Peak RSS (MB) of named services (pid, whole process tree?), sampled every ``every`` s in a thread."""

    def __init__(self, services: dict[str, tuple[int, bool]], every: float = 0.25) -> None:
        self.services, self.every = services, every
        self.peak = {name: 0.0 for name in services}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def add(self, name: str, pid: int, tree: bool = True) -> None:
        self.peak.setdefault(name, 0.0)
        self.services[name] = (pid, tree)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, (pid, tree) in list(self.services.items()):
                self.peak[name] = max(self.peak[name], rss_mb(pid, tree))
            self._stop.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


@contextmanager
def dask_cluster(work: Path, workers: int = 2):
    """A scheduler and ``workers`` single-thread worker processes on loopback, as separate processes
    (the shape of a real cluster); yields (address, scheduler pid, worker launcher pid)."""
    (work / "dask-config").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "dask.yaml", work / "dask-config" / "xaiflow.yaml")
    env = {**os.environ, "DASK_CONFIG": str(work / "dask-config"), "PYTHONPATH": str(REPO)}
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with open(work / "dask.log", "a") as log:
        scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                      "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
                                     env=env, stdout=log, stderr=log)
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
                                   str(workers), "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                  env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, scheduler.pid, worker.pid
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def timed(cmd: list[str], peaks: Peaks, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd`` (its process tree measured as ``client``); (seconds, stdout). Fails loudly."""
    tick = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks.add("client", proc.pid)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - tick, out


def on_cluster(work: Path, cmd: list[str], server: tuple[int, Path] | None = None,
               env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` (with ``{cluster}`` replaced by the address) on a fresh cluster; seconds, output and peaks."""
    with dask_cluster(work) as (address, scheduler, workers):
        services = {"scheduler": (scheduler, False), "workers": (workers, True)}
        if server:
            services["server"] = (server[0], False)
        peaks = Peaks(services)
        seconds, out = timed([c.replace("{cluster}", address) for c in cmd], peaks, env)
        return {"s": seconds, "out": out, "peak": peaks.stop()}


def xaiflow(*args: object) -> list[str]:
    return [sys.executable, "-m", "xaiflow.cli", *map(str, args)]


def store_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


@contextmanager
def local_prefect(home: Path):
    """A real Prefect server on loopback with its database under ``home``; yields its pid."""
    with prefect_server(home=home, log=home / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        yield pid


def database_bytes(home: Path) -> int:
    """Bytes of the server's SQLite database (with its write-ahead log)."""
    return sum(p.stat().st_size for p in home.glob("prefect.db*"))


def task_runs(flow_run: str) -> int:
    """Task runs of a flow run and its subflows, from the server's REST API."""
    import httpx

    api = os.environ["PREFECT_API_URL"]
    sub = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run]}}})
    runs = [flow_run, *(r["id"] for r in sub.json())]
    count = httpx.post(f"{api}/task_runs/count", json={"task_runs": {"flow_run_id": {"any_": runs}}})
    return int(count.json())


def raw_read(ws: Path, group: str, methods: list[str], rows: np.ndarray | None = None) -> tuple[float, int]:
    """Seconds and bytes of reading ``methods``' maps with zarr alone, shard by shard (the rows of
    ``rows`` kept): the reference a query's throughput is compared with."""
    import zarr

    root = zarr.open_group(str(ws), path=group, mode="r")
    tick, nbytes = time.perf_counter(), 0
    for m in methods:
        arr = root[m]
        step = arr.shards[0] if arr.shards else arr.chunks[0]
        for s0 in range(0, arr.shape[0], step):
            block = arr[s0:s0 + step]
            if rows is not None:
                block = block[rows[s0:s0 + step]]
            nbytes += block.nbytes
    return time.perf_counter() - tick, nbytes


def traced_peak(fn) -> float:
    """Peak traced Python memory (MB, numpy buffers included) while ``fn()`` runs; the Dask threaded
    scheduler runs in this process, so its tasks' arrays are traced too."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def queries(ws: Path, model: str, repeat: int = 2) -> dict:
    """Per-class and per-bin means over every Grad-CAM map, and method agreement over the samples with
    both methods, each against a raw zarr read of the same maps (fastest of ``repeat``, interleaved)."""
    from xaiflow.aggregate import group_maps, method_agreement
    from xaiflow.saliency import open_saliency, saliency_group

    group = saliency_group("syn", model)
    both = open_saliency(ws, "syn", model, with_images=False)["done"].all("xai_method").values
    um = float(np.median(store.open_group(ws, "images/syn")["um_per_px"].values))
    cases = {
        "per-class mean": (["grad_cam"], None,
                           lambda: group_maps(open_saliency(ws, "syn", model, ["grad_cam"]), by=schema.LABEL).compute()),
        "per-bin mean": (["grad_cam"], None,
                         lambda: group_maps(open_saliency(ws, "syn", model, ["grad_cam"]), by="um_per_px",
                                            bins=[0, um / 2, um * 2]).compute()),
        "method agreement": (["grad_cam", EXPENSIVE["name"]], both,
                             lambda: method_agreement(open_saliency(ws, "syn", model)).compute()),
    }
    out = {}
    for name, (methods, rows, query) in cases.items():
        t_query, t_raw = [], []
        for _ in range(repeat):
            tick = time.perf_counter()
            query()
            t_query.append(time.perf_counter() - tick)
            seconds, nbytes = raw_read(ws, group, methods, rows)
            t_raw.append(seconds)
        peak = traced_peak(query)  # tracing slows allocations down: a run of its own
        out[name] = {"maps": int(nbytes // (4 * 64 * 64)), "MB": nbytes / 2**20, "query": min(t_query),
                     "raw": min(t_raw), "peak": peak}
    return out


def bench(n: int, work: Path, size: int, chunk: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    config = run_config(work / "run.yaml", n, size, chunk, ["grad_cam"], ["train", "val", "test"])
    expensive = run_config(work / "expensive.yaml", n, size, chunk, [EXPENSIVE], ["test"])
    ws = work / "ws.zarr"
    rows: dict = {"N": n}
    rows["ingest"] = on_cluster(work, xaiflow("ingest", config, "-w", ws, "--cluster", "{cluster}"))
    rows["images"] = store.open_group(ws, "images/syn").sizes["sample"]
    tick = time.perf_counter()
    subprocess.run(xaiflow("train", config, "-w", ws, "--no-predict"), check=True, capture_output=True)
    rows["train"] = time.perf_counter() - tick
    shutil.copytree(ws, work / "flow.zarr")
    shutil.copytree(store.models_dir(ws), store.models_dir(work / "flow.zarr"))
    rows["attribute (CLI)"] = on_cluster(work, xaiflow("attribute", config, "-w", ws, "--cluster", "{cluster}"))
    with local_prefect(work / "prefect-home") as server_pid:
        home = work / "prefect-home"
        db_before = database_bytes(home)
        rows["attribute (flow)"] = run = on_cluster(
            work, [sys.executable, "-c", FLOW, str(config), str(work / "flow.zarr"), "{cluster}"], (server_pid, home),
            env={**os.environ, "PYTHONPATH": str(REPO)})
        rows["task_runs"] = task_runs(json.loads(run["out"].strip().splitlines()[-1])["flow_run"])
        rows["db"] = database_bytes(home) - db_before
    rows["expensive (CLI, test split)"] = on_cluster(
        work, xaiflow("attribute", expensive, "-w", ws, "--cluster", "{cluster}"))
    rows["n_expensive"] = int((store.strings(store.open_group(ws, "images/syn")["split"].values) == "test").sum())
    rows["store"] = store_size(ws)
    (model,) = [p.name for p in (ws / "saliency" / "syn").iterdir() if p.is_dir()]
    rows["queries"] = queries(ws, model)
    return rows


STAGES = ("ingest", "attribute (CLI)", "attribute (flow)", "expensive (CLI, test split)")


def report(rows: list[dict]) -> None:
    print("\n| N | stage | s | images/s | ms/image | vs previous N | client MB | scheduler MB | workers MB | "
          "Prefect server MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        for stage in STAGES:
            run, n = r[stage], r["n_expensive"] if stage.startswith("expensive") else r["images"]
            ms = 1000 * run["s"] / n
            prev = rows[i - 1] if i else None
            ratio = ""
            if prev:
                ratio = f"{ms / (1000 * prev[stage]['s'] / (prev['n_expensive'] if stage.startswith('expensive') else prev['images'])):.2f}x"
            p = run["peak"]
            print(f"| {r['images']:,} | {stage} | {run['s']:.1f} | {n / run['s']:.0f} | {ms:.2f} | {ratio} "
                  f"| {p.get('client', 0):.0f} | {p['scheduler']:.0f} | {p['workers']:.0f} | "
                  f"{p.get('server', 0):.0f} |" if 'server' in p else
                  f"| {r['images']:,} | {stage} | {run['s']:.1f} | {n / run['s']:.0f} | {ms:.2f} | {ratio} "
                  f"| {p.get('client', 0):.0f} | {p['scheduler']:.0f} | {p['workers']:.0f} | - |")
    print("\n| N | train s | flow / CLI throughput (end to end) | at the margin from previous N | Prefect task runs "
          "| server DB growth MB | store MB | files | files per 10^4 images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        cli, flow = r["attribute (CLI)"]["s"], r["attribute (flow)"]["s"]
        margin = ""
        if i:
            p = rows[i - 1]
            margin = f"{(cli - p['attribute (CLI)']['s']) / (flow - p['attribute (flow)']['s']):.2f}"
        size, files = r["store"]
        print(f"| {r['images']:,} | {r['train']:.1f} | {cli / flow:.2f} | {margin} | {r['task_runs']} | "
              f"{r['db'] / 2**20:.1f} | {size / 2**20:.0f} | {files:,} | {files * 1e4 / r['images']:,.0f} |")
    print("\n| N | query | maps | MB read | query s | raw zarr read s | throughput ratio (raw s / query s) "
          "| peak traced MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name, q in r["queries"].items():
            print(f"| {r['images']:,} | {name} | {q['maps']:,} | {q['MB']:.0f} | {q['query']:.2f} | {q['raw']:.2f} | "
                  f"{q['raw'] / q['query']:.2f} | {q['peak']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000],
                    help="image counts (default 1000 10000 100000)")
    ap.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    ap.add_argument("--chunk", type=int, default=64, help="images per chunk (default 64)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xaiflow-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    rows = []
    tick = time.perf_counter()
    for n in args.n:
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        print(f"N = {n:,} ... ({time.perf_counter() - tick:.0f} s)", flush=True)
        rows.append(bench(n, work, args.size, args.chunk))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rows)
    print(f"\n{time.perf_counter() - tick:.0f} s in all; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
