"""Training throughput (images/s, forward + backward + optimizer step) of every architecture.

Measured side by side in one run on the same batch of real UHCS images (or synthetic ones
when the UHCS folder is absent), on the CPU with all cores, at the size configs/uhcs.yaml
trains at. Prints a table and the ratio of each architecture to small_cnn.

    .venv/bin/python benchmarks/training_throughput.py [--size 160] [--batch 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from xaiflow.device import set_torch_threads
from xaiflow.models import MODELS, build_model
from xaiflow.preprocess import to_input

UHCS = Path(os.environ.get("XAIFLOW_UHCS_DIR", Path(__file__).resolve().parents[2] / "shared/data/uhcs"))
ARCH_PARAMS = {"small_cnn": {}, "resnet18": {"width": 0.25, "stem": "compact"}, "resnet18-full": {}}


def images(n: int, size: int) -> np.ndarray:
    if (UHCS / "images").is_dir():
        from PIL import Image

        files = sorted((UHCS / "images").glob("*.png"))[:n]
        return np.stack([np.asarray(Image.open(f).crop((82, 0, 563, 481)).resize((size, size))) for f in files])
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def throughput(arch: str, params: dict, x: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=6, **params)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.zeros(len(x), dtype=torch.long)
    model.train()
    for i in range(steps + 1):  # first step is warm-up
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    threads = set_torch_threads(None)
    x = to_input(images(args.batch, args.size))
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch} x {args.size}px, "
          f"data: {'UHCS' if (UHCS / 'images').is_dir() else 'synthetic'}")
    rows = []
    for name, params in ARCH_PARAMS.items():
        arch = name.split("-")[0]
        if arch in MODELS:
            rows.append((name, params, throughput(arch, params, x, args.steps)))
    base = rows[0][2]
    print(f"{'architecture':<16}{'params':<34}{'images/s':>10}{'vs small_cnn':>14}")
    for name, params, ips in rows:
        print(f"{name:<16}{str(params):<34}{ips:>10.1f}{ips / base:>13.2f}x")
    print("backbone (torchvision) is not measured: torchvision cannot be installed beside this torch build")


if __name__ == "__main__":
    main()
