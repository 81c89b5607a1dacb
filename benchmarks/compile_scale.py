"""How compile time grows with the graph: generated specs of 1k to 100k nodes.

Not a test: run ``python benchmarks/compile_scale.py`` (1k, 3k, 10k, 30k, 100k nodes) or
``--quick`` (1k, 3k, 10k). For each shape of graph (a chain, a residual MLP, a wide
fan-out and a random DAG) and each size it prints the seconds of each stage of
``graphgen compile`` (NumPy backend), how much the process's peak resident memory grew
over the compile (per spec node) and, per shape, the exponent ``k`` of the least-squares
fit ``total ~ nodes^k``. Targets (issue 16): 10k nodes <= 5 s, 100k <= 60 s, k <= 1.15
from 1k to 100k, peak <= 20 KB per node.

Stages (timed through :func:`graphgen.api.observing`, in CPU seconds of the process:
steadier than wall time on a shared machine): ``load`` reads and validates the spec
file, ``shapes`` infers shapes, ``adjoint`` builds the backward pass, ``optimize`` runs
the passes to a fixed point, ``codegen`` schedules, names and builds the statements,
``layout`` is the part of codegen spent laying code out in lines (:mod:`graphgen.codegen.
layout`, measured by wrapping its entry points), ``render`` prints the templates,
``bytecode`` is CPython compiling the module's text (the syntax check, whose code objects
the import runs: the floor of any compile), ``import`` runs it.

Each size runs in a fresh process so that one graph's garbage and caches do not time the
next. ``--profile SHAPE NODES`` runs one compile under cProfile and prints the top
functions instead. ``--models`` times ResNet-50's and DenseNet-121's Numba modules
(ONNX's light models, softmax cross-entropy loss) from loading to the end of the first
``value_and_grad`` call, with an empty cache directory (targets 10 s and 15 s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

SHAPES = ("chain", "residual", "fanout", "random")
SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
QUICK = (1_000, 3_000, 10_000)
STAGES = (
    "load",
    "shapes",
    "adjoint",
    "optimize",
    "codegen",
    "layout",
    "render",
    "bytecode",
    "import",
)
WIDTH = 4  # every array is (batch, WIDTH): the compiler's work, not NumPy's, is timed


def _spec(name, inputs, params, nodes, loss):
    return {
        "name": name,
        "inputs": inputs,
        "params": params,
        "nodes": nodes,
        "outputs": [loss],
        "loss": loss,
    }


def chain(n):
    """A chain of elementwise ops on one value, a param mixed in every tenth."""
    inputs = {"x": ["batch", WIDTH]}
    params, nodes, prev = {}, {}, "x"
    unary = ("tanh", "sin", "sigmoid", "neg", "square")
    i = 0
    while len(nodes) + len(params) + 3 < n:
        if i % 10 == 9:
            params[f"a{i}"] = [WIDTH]
            nodes[f"h{i}"] = {"op": "mul", "args": [prev, f"a{i}"]}
        else:
            nodes[f"h{i}"] = {"op": unary[i % len(unary)], "args": [prev]}
        prev = f"h{i}"
        i += 1
    nodes["J"] = {"op": "sum", "args": [prev]}
    return _spec("chain", inputs, params, nodes, "J")


def residual(n):
    """A residual MLP: per layer ``h + tanh(h @ W + b)`` (six spec nodes a layer)."""
    inputs = {"x": ["batch", WIDTH], "t": ["batch", WIDTH]}
    params, nodes, prev = {}, {}, "x"
    i = 0
    while len(nodes) + len(params) + 8 < n:
        params[f"W{i}"] = [WIDTH, WIDTH]
        params[f"b{i}"] = {"shape": [WIDTH], "init": "zeros"}
        nodes[f"z{i}"] = {"op": "matmul", "args": [prev, f"W{i}"]}
        nodes[f"a{i}"] = {"op": "add", "args": [f"z{i}", f"b{i}"]}
        nodes[f"t{i}"] = {"op": "tanh", "args": [f"a{i}"]}
        nodes[f"r{i}"] = {"op": "add", "args": [prev, f"t{i}"]}
        prev = f"r{i}"
        i += 1
    nodes["J"] = {"op": "mse", "args": [prev, "t"]}
    return _spec("residual", inputs, params, nodes, "J")


def fanout(n, group=50):
    """One input read by every branch ``tanh(x * a_i)``; branches summed by ``add_n`` in
    groups of ``group``, then the groups: ``x``'s adjoint sums thousands of terms."""
    inputs = {"x": ["batch", WIDTH]}
    params, nodes = {}, {}
    branches = max(1, (n - 2) // 3)
    for i in range(branches):
        params[f"a{i}"] = [WIDTH]
        nodes[f"m{i}"] = {"op": "mul", "args": ["x", f"a{i}"]}
        nodes[f"y{i}"] = {"op": "tanh", "args": [f"m{i}"]}
    ys = [f"y{i}" for i in range(branches)]
    sums = []
    for k in range(0, len(ys), group):
        nodes[f"s{k // group}"] = {"op": "add_n", "args": ys[k : k + group]}
        sums.append(f"s{k // group}")
    nodes["S"] = {"op": "add_n", "args": sums}
    nodes["J"] = {"op": "sum", "args": ["S"]}
    return _spec("fanout", inputs, params, nodes, "J")


def random_dag(n, seed=0):
    """A random DAG of elementwise ops: each node reads one of the last few values and,
    for a binary op, one anywhere before it; the values nothing reads are summed."""
    rng = random.Random(seed)
    inputs = {"x": ["batch", WIDTH], "y": ["batch", WIDTH]}
    params = {f"p{i}": [WIDTH] for i in range(max(1, n // 25))}
    values = ["x", "y"]
    unary = ("tanh", "sin", "sigmoid", "neg")
    binary = ("add", "mul", "sub")
    nodes, read = {}, set()
    count = len(inputs) + len(params)
    while count + 3 < n:
        name = f"v{len(nodes)}"
        a = values[-1 - min(len(values) - 1, int(rng.expovariate(0.3)))]
        if len(nodes) % 20 == 0 and len(nodes) // 20 < len(params):  # every param read
            nodes[name] = {"op": "mul", "args": [a, f"p{len(nodes) // 20}"]}
            read.add(a)
        elif rng.random() < 0.5:
            b = values[rng.randrange(len(values))]
            nodes[name] = {"op": rng.choice(binary), "args": [a, b]}
            read.update((a, b))
        else:
            nodes[name] = {"op": rng.choice(unary), "args": [a]}
            read.add(a)
        values.append(name)
        count += 1
    sinks = [v for v in nodes if v not in read]
    sums = []
    for k in range(0, len(sinks), 50):
        nodes[f"s{k // 50}"] = {"op": "add_n", "args": sinks[k : k + 50]}
        sums.append(f"s{k // 50}")
    nodes["S"] = {"op": "add_n", "args": sums} if len(sums) > 1 else nodes.pop(sums[0])
    nodes["J"] = {"op": "sum", "args": ["S"]}
    return _spec("random", inputs, params, nodes, "J")


GENERATORS = {
    "chain": chain,
    "residual": residual,
    "fanout": fanout,
    "random": random_dag,
}


def spec_nodes(data):
    return len(data["inputs"]) + len(data["params"]) + len(data["nodes"])


# ------------------------------------------------------------------ one measurement


class Clock:
    """An observer of :func:`graphgen.api.observing`: CPU seconds per stage, with the
    time spent in :mod:`graphgen.codegen.layout` moved from ``codegen`` to ``layout``
    and CPython's compile of the module from ``render`` to ``bytecode``."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.inner = {"layout": 0.0, "bytecode": 0.0}  # stage -> seconds so far
        self._start = {}

    def begin(self, name, size=None):
        self._start[name] = (time.process_time(), dict(self.inner))

    def end(self, name):
        t0, inner0 = self._start.pop(name)
        self.seconds[name] += time.process_time() - t0
        part = {"codegen": "layout", "render": "bytecode"}.get(name)
        if part:  # the share of it timed apart
            self.seconds[name] -= self.inner[part] - inner0[part]
            self.seconds[part] += self.inner[part] - inner0[part]


def _timed(clock, part, fn, depth):
    def wrapper(*args, **kwargs):
        if depth[0]:
            return fn(*args, **kwargs)
        depth[0] += 1
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.inner[part] += time.process_time() - t0
            depth[0] -= 1

    return wrapper


def _time_bytecode(clock):
    """Time CPython's compile of the module (``render._compile``)."""
    from graphgen.codegen import render

    render._compile = _timed(clock, "bytecode", render._compile, [0])


def _time_layout(clock):
    """Wrap the public functions of codegen.layout, wherever they were imported, so
    that the outermost call's time adds to ``clock.inner["layout"]``."""
    import types

    from graphgen.codegen import layout

    depth = [0]
    public = {
        name: fn
        for name, fn in vars(layout).items()
        if isinstance(fn, types.FunctionType)
        and not name.startswith("_")
        and fn.__module__ == layout.__name__
    }
    wrapped = {fn: _timed(clock, "layout", fn, depth) for fn in public.values()}
    for mod in list(sys.modules.values()):
        if mod is None or not getattr(mod, "__name__", "").startswith("graphgen"):
            continue
        for name, value in list(vars(mod).items()):
            if isinstance(value, types.FunctionType) and value in wrapped:
                setattr(mod, name, wrapped[value])


def measure(shape, n, backend="numpy"):
    """One compile of a generated spec: {stage: seconds}, the growth of the process's
    peak resident memory over the compile (bytes), spec nodes."""
    import resource

    import graphgen
    from graphgen import api

    data = GENERATORS[shape](n)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{shape}.json")
        with open(path, "w") as f:
            json.dump(data, f)
        clock = Clock()
        _time_layout(clock)
        _time_bytecode(clock)
        before = _rss()
        cpu, wall = time.process_time(), time.perf_counter()
        with api.observing(clock):
            G = graphgen.load(path)
            graphgen.compile(G, backend=backend)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return clock.seconds, cpu, wall, peak, spec_nodes(data)


def _rss():
    """The process's resident memory now (bytes), from /proc; the peak so far if the
    system has no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


MODEL_TARGETS = {"resnet50": 10.0, "densenet121": 15.0}  # seconds, Numba first call


def model_first_call(name):
    """ResNet-50 or DenseNet-121 (ONNX's light models) with a softmax cross-entropy
    loss: load, compile with the Numba backend into an empty cache directory, and the
    first ``value_and_grad`` call (which compiles the kernels): wall seconds of each,
    and the CPU seconds of the first call (steadier than wall time on a shared
    machine)."""
    import numpy as np
    import onnx

    import graphgen

    light = os.path.join(
        os.path.dirname(onnx.__file__), "backend", "test", "data", "light"
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAPHGEN_CACHE_DIR"] = cache  # cold: no module, no kernels
        t0 = time.perf_counter()
        G = graphgen.load(
            os.path.join(light, f"light_{name}.onnx"),
            loss="softmax_cross_entropy",
            labels="labels",
        )
        t1 = time.perf_counter()
        module = graphgen.compile(G, backend="numba")
        t2 = time.perf_counter()
        rng = np.random.default_rng(0)
        arrays = dict(module.init_params())
        for k, shape in module.INPUTS.items():
            if module.DTYPES[k] == "int64":
                arrays[k] = np.zeros(shape, dtype=np.int64)  # class 0: any model has it
            else:
                arrays[k] = rng.standard_normal(shape).astype(module.DTYPES[k])
        c2 = time.process_time()
        module.value_and_grad(**arrays)
        t3, c3 = time.perf_counter(), time.process_time()
    return {"load": t1 - t0, "compile": t2 - t1, "first call": t3 - t2, "cpu": c3 - c2}


def profile(shape, n, top=40):
    import cProfile
    import pstats

    import graphgen

    data = GENERATORS[shape](n)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{shape}.json")
        with open(path, "w") as f:
            json.dump(data, f)
        pr = cProfile.Profile()
        pr.enable()
        graphgen.compile(graphgen.load(path))
        pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(top)
    pstats.Stats(pr).sort_stats("tottime").print_stats(top)


# ------------------------------------------------------------------------ the table


def machine():
    import numpy as np

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in f
                    if ln.startswith("model name")
                ),
                platform.processor(),
            )
    except OSError:
        cpu = platform.processor() or platform.machine()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    blas = "?"
    try:
        cfg = np.show_config(mode="dicts")
        info = cfg["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):  # an older NumPy: no dicts
        blas = "?"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, load {load}; Python "
        f"{platform.python_version()}, NumPy {np.__version__} ({blas}), threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}"
    )


def fit_exponent(points):
    """The least-squares slope of log(total) against log(nodes)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")
    )


def run_child(shape, n, backend):
    out = subprocess.run(
        [sys.executable, __file__, "--one", shape, str(n), "--backend", backend],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{shape} {n}: failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1k, 3k and 10k nodes only")
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--sizes", nargs="+", type=int, help="spec node counts")
    p.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    p.add_argument("--one", nargs=2, metavar=("SHAPE", "NODES"), help=argparse.SUPPRESS)
    p.add_argument("--profile", nargs=2, metavar=("SHAPE", "NODES"))
    p.add_argument(
        "--models",
        action="store_true",
        help="ResNet-50 and DenseNet-121: Numba compile and first call, cold cache",
    )
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        seconds, cpu, wall, peak, nodes = measure(
            args.one[0], int(args.one[1]), args.backend
        )
        r = {"seconds": seconds, "cpu": cpu, "wall": wall, "peak": peak, "nodes": nodes}
        print(json.dumps(r))
        return 0
    if args.model:
        print(json.dumps(model_first_call(args.model)))
        return 0
    if args.models:
        print(machine())
        print("Numba backend, cold cache: seconds (first call compiles the kernels)")
        for name, target in MODEL_TARGETS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--model", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                print(f"{name:<12} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cpu = r.pop("cpu")
            total = sum(r.values())
            cells = ", ".join(f"{k} {v:.1f}" for k, v in r.items())
            print(
                f"{name:<12} {cells} (CPU {cpu:.1f}); total {total:.1f} "
                f"(target <= {target:.0f})"
            )
        return 0
    if args.profile:
        profile(args.profile[0], int(args.profile[1]))
        return 0
    sizes = args.sizes or (QUICK if args.quick else SIZES)
    print(machine())
    print(
        f"backend: {args.backend}; CPU seconds per stage, CPU = process time of the "
        "whole compile, wall = its wall time, peak = growth of peak RSS over it"
    )
    head = " ".join(f"{s:>8}" for s in STAGES)
    print(
        f"{'shape':<9}{'nodes':>8} {head} {'CPU':>8} {'wall':>8} {'peak MB':>8} "
        f"{'B/node':>7}"
    )
    for shape in args.shapes:
        points, cpus = [], []
        for n in sizes:
            r = run_child(shape, n, args.backend)
            sec = r["seconds"]
            points.append((r["nodes"], r["wall"]))
            cpus.append((r["nodes"], r["cpu"]))
            cells = " ".join(f"{sec[s]:8.2f}" for s in STAGES)
            print(
                f"{shape:<9}{r['nodes']:>8,} {cells} {r['cpu']:8.2f} {r['wall']:8.2f} "
                f"{r['peak'] / 1e6:8.1f} {r['peak'] / r['nodes']:7,.0f}",
                flush=True,
            )
        # CPU time as well: on a shared machine, wall time also measures the others
        print(
            f"{shape:<9} fitted exponent {fit_exponent(points):.2f} wall, "
            f"{fit_exponent(cpus):.2f} CPU (time x{points[-1][1] / points[0][1]:.0f} "
            f"for nodes x{points[-1][0] / points[0][0]:.0f}; target <= 1.15)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
