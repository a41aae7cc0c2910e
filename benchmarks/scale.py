"""Scale benchmark: the same chunked stages at growing N, through the CLI and through Prefect flows.

For each N (synthetic 64 px images, chunks of 64) on one machine:

1. ``xaiflow ingest`` and ``xaiflow train`` (a tiny CNN, one epoch: the model is not the point);
2. Grad-CAM maps for every image, twice on copies of the same workspace, side by side:
   ``xaiflow attribute`` (the library's Dask loop, a local cluster of 2 workers) and the Prefect
   attribute flow against a real local Prefect server (the same cluster profile), whose chunk
   groups are Prefect tasks (flows/jobs.py);

and prints per stage: seconds, images/s, peak RSS (client process, its worker processes, the
Prefect server), the number of Prefect task runs and the server database's growth, the store's
bytes and file count (per 10^4 images), and the flow/CLI throughput ratio (target >= 0.95).

    .venv/bin/python benchmarks/scale.py --n 1000 16000 [--work /tmp/scale] [--chunk 64]

Every N makes a workspace of its own under ``--work`` (removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploy.local import prefect_server  # noqa: E402
from xaiflow import store  # noqa: E402

CLASSES = ("particles", "lamellae", "network", "needles")
FLOW = """
import json, sys
from flows.attribute import attribute_flow
config, ws, cluster = sys.argv[1:]
state = attribute_flow(config_path=config, workspace=ws, cluster=cluster, return_state=True)
print(json.dumps({"flow_run": str(state.state_details.flow_run_id), **state.result()}))
"""


def run_config(path: Path, n: int, size: int, chunk: int) -> Path:
    """A run config of ``n`` synthetic images (4 classes, 8 per specimen), a tiny CNN and Grad-CAM."""
    per_class = max(1, n // (len(CLASSES) * 8))
    path.write_text(yaml.safe_dump({
        "datasets": [{"name": "syn", "chunk_size": chunk, "geometry": {"size": [size, size]},
                      "source": {"kind": "synthetic", "classes": list(CLASSES), "specimens_per_class": per_class,
                                 "images_per_specimen": 8, "size": [size, size]}}],
        "train": {"dataset": "syn", "epochs": 1, "model_params": {"widths": [4, 8]}, "device": "cpu",
                  "batch_size": 64},
        "attribution": {"dataset": "syn", "device": "cpu", "splits": ["train", "val", "test"],
                        "methods": ["grad_cam"]}}))
    return path


class PeakRSS:
    """Peak resident memory (MB) of a process and, separately, of the sum of its descendants,
    sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every = pid, every
        self.own = self.children = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                proc = psutil.Process(self.pid)
                self.own = max(self.own, proc.memory_info().rss / 2**20)
                kids = 0.0
                for child in proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        pass
                self.children = max(self.children, kids)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, PeakRSS]:
    """Run ``cmd``; (seconds, stdout, peak memory of it and its children). Fails loudly."""
    tick = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = PeakRSS(proc.pid)
    out, err = proc.communicate()
    peak.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - tick, out, peak


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
    """A real Prefect server on loopback with its database under ``home``; yields (server pid, home)."""
    with prefect_server(home=home, log=home / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        yield pid, home


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


def bench(n: int, work: Path, size: int, chunk: int, cluster: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    config = run_config(work / "run.yaml", n, size, chunk)
    ws = work / "ws.zarr"
    rows: dict = {"N": n}
    seconds, _, peak = timed(xaiflow("ingest", config, "-w", ws, "--cluster", cluster))
    rows["images"] = store.open_group(ws, "images/syn").sizes["sample"]
    rows["ingest"] = (seconds, peak)
    rows["train"] = timed(xaiflow("train", config, "-w", ws, "--no-predict"))[0]
    shutil.copytree(ws, work / "flow.zarr")
    shutil.copytree(store.models_dir(ws), store.models_dir(work / "flow.zarr"))
    seconds, _, peak = timed(xaiflow("attribute", config, "-w", ws, "--cluster", cluster))
    rows["attribute_cli"] = (seconds, peak)
    rows["store"] = store_size(ws)
    with local_prefect(work / "prefect-home") as (server_pid, home):
        server = PeakRSS(server_pid)
        db_before = database_bytes(home)
        seconds, out, peak = timed([sys.executable, "-c", FLOW, str(config), str(work / "flow.zarr"), cluster],
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        server.stop()
        flow_run = yaml.safe_load(out.strip().splitlines()[-1])["flow_run"]
        rows["attribute_flow"] = (seconds, peak)
        rows["task_runs"] = task_runs(flow_run)
        rows["server"] = (server.own, database_bytes(home) - db_before)
    return rows


def report(rows: list[dict], chunk: int) -> None:
    print("\n| N | stage | s | images/s | ms/image | client peak MB | workers peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for stage in ("ingest", "attribute_cli", "attribute_flow"):
            s, peak = r[stage]
            print(f"| {r['images']:,} | {stage} | {s:.1f} | {r['images'] / s:.0f} | {1000 * s / r['images']:.2f} "
                  f"| {peak.own:.0f} | {peak.children:.0f} |")
    print("\n| N | train s | flow / CLI throughput | Prefect task runs (chunks) | server peak MB | server DB growth MB "
          "| store MB | files | files per 10^4 images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["attribute_cli"][0] / r["attribute_flow"][0]
        chunks = -(-r["images"] // chunk)
        size, files = r["store"]
        print(f"| {r['images']:,} | {r['train']:.1f} | {ratio:.2f} | {r['task_runs']} ({chunks}) | "
              f"{r['server'][0]:.0f} | {r['server'][1] / 2**20:.1f} | {size / 2**20:.0f} | {files:,} | "
              f"{files * 1e4 / r['images']:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 16000], help="image counts (default 1000 16000)")
    ap.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    ap.add_argument("--chunk", type=int, default=64, help="images per chunk (default 64)")
    ap.add_argument("--cluster", default="local", help="cluster profile of every stage (default local: 2 workers)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xaiflow-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    rows = []
    for n in args.n:
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        print(f"N = {n:,} ...", flush=True)
        rows.append(bench(n, work, args.size, args.chunk, args.cluster))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, args.chunk)


if __name__ == "__main__":
    main()
