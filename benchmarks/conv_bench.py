"""Generated conv/pool forward+backward against PyTorch eager autograd, float32, batch 8.

    python benchmarks/conv_bench.py [--batch 8] [--rounds 3] [--threads N]

Each row is one ResNet-50 layer shape: the graphgen module computes
``loss = sum(r · op(x, w))`` and its gradients with respect to x (and w); PyTorch does
the same with autograd. The ratio is graphgen time / PyTorch time (lower is better).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networkx as nx
import numpy as np

import graphgen

# (label, op, x shape without batch, w shape or None, attrs), ResNet-50's layers at 224²
LAYERS = [
    (
        "conv1 7x7/2 3->64 @224",
        "conv",
        (3, 224, 224),
        (64, 3, 7, 7),
        {"strides": [2, 2], "pads": [3, 3, 3, 3]},
    ),
    (
        "maxpool 3x3/2 @112",
        "max_pool",
        (64, 112, 112),
        None,
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    ("1x1 64->64 @56", "conv", (64, 56, 56), (64, 64, 1, 1), {}),
    ("3x3 64->64 @56", "conv", (64, 56, 56), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("1x1 64->256 @56", "conv", (64, 56, 56), (256, 64, 1, 1), {}),
    ("1x1 256->128 @56", "conv", (256, 56, 56), (128, 256, 1, 1), {}),
    (
        "3x3/2 128->128 @56",
        "conv",
        (128, 56, 56),
        (128, 128, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    (
        "1x1/2 256->512 @56 (downsample)",
        "conv",
        (256, 56, 56),
        (512, 256, 1, 1),
        {"strides": [2, 2]},
    ),
    (
        "3x3 128->128 @28",
        "conv",
        (128, 28, 28),
        (128, 128, 3, 3),
        {"pads": [1, 1, 1, 1]},
    ),
    (
        "3x3 256->256 @14",
        "conv",
        (256, 14, 14),
        (256, 256, 3, 3),
        {"pads": [1, 1, 1, 1]},
    ),
    ("1x1 1024->256 @14", "conv", (1024, 14, 14), (256, 1024, 1, 1), {}),
    ("3x3 512->512 @7", "conv", (512, 7, 7), (512, 512, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("1x1 2048->512 @7", "conv", (2048, 7, 7), (512, 2048, 1, 1), {}),
    ("avgpool 7x7 @7", "avg_pool", (2048, 7, 7), None, {"kernel_shape": [7, 7]}),
]


def module_for(op, x_shape, w_shape, attrs, batch):
    G = nx.DiGraph()
    G.add_node("x", kind="input", shape=(batch, *x_shape), dtype="float32")
    args = ["x"]
    if w_shape is not None:
        G.add_node("w", kind="param", shape=w_shape, dtype="float32", init="normal")
        args.append("w")
    G.add_node("y", kind="op", op=op, attrs=dict(attrs))
    for i, a in enumerate(args):
        G.add_edge(a, "y", pos=(i,))
    G.graph.update(name="bench", dtype="float32", outputs=["y"])
    y_shape = graphgen.prepare(G).nodes["y"]["shape"]
    G.add_node("r", kind="input", shape=y_shape, dtype="float32")
    G.add_node("yr", kind="op", op="mul", attrs={})
    G.add_edge("y", "yr", pos=(0,))
    G.add_edge("r", "yr", pos=(1,))
    G.add_node("loss", kind="op", op="sum", attrs={})
    G.add_edge("yr", "loss", pos=(0,))
    G.graph.update(loss="loss", outputs=["loss"], wrt=args)
    return graphgen.compile(G), y_shape


def best_of(fn, rounds):
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_fn(torch, op, attrs, x, w, r):
    F = torch.nn.functional
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = None if w is None else torch.from_numpy(w).requires_grad_(True)
    tr = torch.from_numpy(r)
    nd = len(attrs.get("kernel_shape", w.shape[2:] if w is not None else ()))
    pads = attrs.get("pads", [0] * 2 * nd)[:nd]
    strides = attrs.get("strides", [1] * nd)

    def run():
        tx.grad = None
        if tw is not None:
            tw.grad = None
        if op == "conv":
            y = F.conv2d(tx, tw, stride=strides, padding=pads)
        elif op == "max_pool":
            y = F.max_pool2d(tx, attrs["kernel_shape"], stride=strides, padding=pads)
        else:
            y = F.avg_pool2d(tx, attrs["kernel_shape"], stride=strides, padding=pads)
        (y * tr).sum().backward()

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="PyTorch threads")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"batch {args.batch}, float32, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"{'layer':<34} {'graphgen ms':>12} {'torch ms':>10} {'ratio':>7}")
    total_g = total_t = 0.0
    for label, op, x_shape, w_shape, attrs in LAYERS:
        module, y_shape = module_for(op, x_shape, w_shape, attrs, args.batch)
        x = rng.standard_normal((args.batch, *x_shape)).astype(np.float32)
        r = rng.standard_normal(y_shape).astype(np.float32)
        arrays = {"x": x, "r": r}
        w = None
        if w_shape is not None:
            w = (rng.standard_normal(w_shape) * 0.05).astype(np.float32)
            arrays["w"] = w
        tg = best_of(lambda m=module, a=arrays: m.value_and_grad(**a), args.rounds)
        tt = best_of(torch_fn(torch, op, attrs, x, w, r), args.rounds)
        total_g += tg
        total_t += tt
        print(f"{label:<34} {tg * 1e3:>12.1f} {tt * 1e3:>10.1f} {tg / tt:>7.2f}")
    print(
        f"{'total':<34} {total_g * 1e3:>12.1f} {total_t * 1e3:>10.1f} {total_g / total_t:>7.2f}"
    )


if __name__ == "__main__":
    main()
