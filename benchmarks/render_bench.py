"""Time every diagram view of big graphs: graphgen's part and Graphviz's ``dot``.

Not a test. ``python benchmarks/render_bench.py`` draws the forward, flow and adjoint
views of the 50-layer residual spec (:func:`residual_spec`), ResNet-50, DenseNet-121
and Inception v2 (the ONNX models of the ``onnx`` package's test data), each three
ways: as ``graphgen render`` draws it by default (collapsed by block when too big),
with ``--collapse``, and with ``--full``. Target: every default picture in <= 10 s; a
drawing ``dot`` cannot finish within the budget is stopped with a message (shown as
``stopped``). Prints a Markdown table with the machine line.

    python benchmarks/render_bench.py                    # everything, budget 60 s
    python benchmarks/render_bench.py --budget 20 --cases residual50 resnet50

``--explain`` times ``graphgen explain --values`` instead, for the first weight of each
graph (every path to the loss), each in a process of its own: wall and CPU seconds of
the call and the process's peak RSS (target: a few seconds, a few hundred MB).

    python benchmarks/render_bench.py --explain --cases residual50 resnet50
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from graphgen.errors import DiagramError
from graphgen.frontends.spec import from_dict
from graphgen.views import diagram

VIEWS = ("forward", "flow", "adjoint")
MODES = {"default": {}, "--collapse": {"collapse": True}, "--full": {"full": True}}
TARGET = 10.0


def residual_spec(layers=50, width=8, prefix=""):
    """A residual MLP spec: per layer ``m{i} = r{i-1} @ W{i}``, ``a{i} = m{i} + b{i}``,
    ``h{i} = tanh(a{i})``, ``r{i} = h{i} + r{i-1}`` (``r0`` is the input ``x``); the
    loss is the MSE of the last ``r`` against ``t``. ``prefix`` (``"layer{i}/"``)
    puts each layer's names under a prefix."""
    data = {
        "name": f"residual{layers}",
        "inputs": {"x": ["batch", width], "t": ["batch", width]},
        "params": {},
        "nodes": {},
    }
    prev = "x"
    for i in range(1, layers + 1):
        p = prefix.format(i=i)
        W, b = f"{p}W{i}", f"{p}b{i}"
        data["params"][W] = [width, width]
        data["params"][b] = [width]
        m, a, h, r = (f"{p}{c}{i}" for c in "mahr")
        data["nodes"][m] = {"op": "matmul", "args": [prev, W]}
        data["nodes"][a] = {"op": "add", "args": [m, b]}
        data["nodes"][h] = {"op": "tanh", "args": [a]}
        data["nodes"][r] = {"op": "add", "args": [h, prev]}
        prev = r
    data["nodes"]["J"] = {"op": "mse", "args": [prev, "t"]}
    data["loss"] = "J"
    return data


def onnx_model(name):
    """An ONNX model of the ``onnx`` package's test data, with a training loss."""
    from onnx_bench import light

    import graphgen

    path = light(name)
    if not os.path.exists(path):
        return None
    return graphgen.load(path, loss="softmax_cross_entropy", labels="labels")


CASES = {
    "residual50": lambda: from_dict(residual_spec(50), source="<residual50>"),
    "resnet50": lambda: onnx_model("resnet50"),
    "densenet121": lambda: onnx_model("densenet121"),
    "inception_v2": lambda: onnx_model("inception_v2"),
}


# the weight explained: the first layer's, so that every layer is on its paths
EXPLAIN_WRT = {
    "residual50": "W1",
    "resnet50": "gpu_0/conv1_w_0",
    "densenet121": "conv1_w_0",
    "inception_v2": "conv1/7x7_s2_w_0",
}


def explain_one(case):
    """Run in a process of its own: time ``explain --values`` and print
    ``wall cpu peak_mb mismatches``."""
    import resource

    import graphgen

    G = CASES[case]()
    t0, c0 = time.perf_counter(), time.process_time()
    text = graphgen.explain(G, EXPLAIN_WRT[case], values=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{wall:.2f} {cpu:.2f} {peak:.0f} {text.mismatches}")


def explain_table(cases):
    print(
        "| graph | wrt | explain --values wall s | CPU s | peak RSS MB | mismatches |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        done = subprocess.run(
            [sys.executable, __file__, "--explain-one", case],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"| {case} | {EXPLAIN_WRT[case]} | – | – | – | {tail} |", flush=True)
            continue
        wall, cpu, peak, bad = done.stdout.split()
        print(
            f"| {case} | {EXPLAIN_WRT[case]} | {wall} | {cpu} | {peak} | {bad} |",
            flush=True,
        )


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                (x.split(":", 1)[1].strip() for x in f if x.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    dot = shutil.which("dot")
    version = (
        subprocess.run(
            [dot, "-V"], capture_output=True, text=True, check=False
        ).stderr.strip()
        if dot
        else "no dot"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"{platform.machine()}, {cpu}, {os.cpu_count()} CPUs, load {load:.1f}; "
        f"{version}; Python {platform.python_version()}; OMP/BLAS threads {threads} "
        "(dot is single-threaded)"
    )


def one(G, view, mode, budget):
    """(graphgen seconds, dot seconds or None when stopped, nodes, edges, note)."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        drawing = diagram.render(G, view, timeout=budget, **MODES[mode])
        t1 = time.perf_counter()
        try:
            diagram.run_dot(drawing.source, "svg", timeout=budget, what=drawing.what)
            t2 = time.perf_counter() - t1
        except DiagramError:
            t2 = None
    text = drawing.source
    nodes = sum(1 for x in text.splitlines() if x.startswith("\tn") and "->" not in x)
    edges = text.count(" -> ") - text.count("style=invis")
    note = "collapsed" if any("collapsed" in str(w.message) for w in said) else ""
    return t1 - t0, t2, nodes, edges, note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--budget", type=float, default=60.0, help="seconds dot may take")
    p.add_argument(
        "--explain", action="store_true", help="time explain --values instead"
    )
    p.add_argument("--explain-one", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.explain_one:
        return explain_one(args.explain_one)
    print(f"machine: {machine()}")
    if args.explain:
        return explain_table(args.cases)
    print(f"budget {args.budget:g} s per drawing; target {TARGET:g} s (total)\n")
    print(
        "| graph | view | mode | drawn nodes | drawn edges | graphgen s | dot s "
        "| total s | ≤ 10 s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            G = CASES[case]()
        if G is None:
            print(f"| {case} | – | – | – | – | – | – | – | model not available |")
            continue
        for view in args.views:
            for mode in args.modes:
                gg, dt, n, e, note = one(G, view, mode, args.budget)
                mode_text = mode + (
                    " (collapsed)" if note and mode == "default" else ""
                )
                dot_text = (
                    f"{dt:.2f}" if dt is not None else f"stopped at {args.budget:g}"
                )
                total = gg + dt if dt is not None else None
                ok = (
                    "yes"
                    if total is not None and total <= TARGET
                    else ("no" if total is not None else "stopped, says what to do")
                )
                total_text = f"{total:.2f}" if total is not None else "–"
                print(
                    f"| {case} | {view} | {mode_text} | {n} | {e} | {gg:.2f} | "
                    f"{dot_text} | {total_text} | {ok} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
