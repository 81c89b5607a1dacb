"""ONNX models: compile times of the nine light models, and ResNet-50 training speed.

    python benchmarks/onnx_bench.py compile          # the nine models, both backends
    python benchmarks/onnx_bench.py resnet50         # batch 8, 224x224, float32
    python benchmarks/onnx_bench.py resnet50 --batch 2 --rounds 2 --passes 1  # a quick look

``resnet50`` times forward + backward (softmax cross-entropy on the logits, gradients of
every weight; batch-norm running statistics frozen) for graphgen's NumPy and Numba modules
and PyTorch eager autograd on the same graph (benchmarks/onnx_torch.py), and forward
alone against onnxruntime. Each implementation runs in its own process with the thread
settings printed above the table; times are medians over rounds after a warm-up call,
pooled over --passes turns of all implementations (each pass's median is listed too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

MODELS = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]
THREADS = "2"
ENV = {
    "OMP_NUM_THREADS": THREADS,
    "OPENBLAS_NUM_THREADS": THREADS,
    "MKL_NUM_THREADS": THREADS,
    "NUMBA_NUM_THREADS": THREADS,
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "PYTHONHASHSEED": "0",
}


def light(name):
    import onnx

    return os.path.join(
        os.path.dirname(onnx.__file__),
        "backend",
        "test",
        "data",
        "light",
        f"light_{name}.onnx",
    )


# ----------------------------------------------------------------------- compile


def compile_times(jit):
    import onnx

    import graphgen
    from graphgen import graph as g

    rows = []
    for name in MODELS:
        path = light(name)
        n_onnx = len(onnx.load(path).graph.node)
        t0 = time.perf_counter()
        G = graphgen.load(path, vjp=False)
        t1 = time.perf_counter()
        graphgen.generate(G)
        t2 = time.perf_counter()
        Gt = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
        graphgen.generate(Gt)
        t3 = time.perf_counter()
        graphgen.generate(G, backend="numba")
        t4 = time.perf_counter()
        ops = sum(1 for n in G if G.nodes[n][g.KIND] == g.OPNODE)
        row = [name, n_onnx, ops, t1 - t0, t2 - t1, t3 - t2, t4 - t3]
        if jit:
            row.append(_numba_first_call(name))
        rows.append(row)
    head = (
        "| model | ONNX nodes | graphgen ops | import s | forward module s "
        "| training module s | numba module s |"
    )
    sep = "|---|---|---|---|---|---|---|"
    if jit:
        head += " numba first call (JIT) s |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        cells = [r[0], str(r[1]), str(r[2])] + [f"{v:.2f}" for v in r[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _numba_first_call(name):
    code = (
        f"import sys, time, onnx; sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]\n"
        "import graphgen, onnx_bench\n"
        "from onnx.backend.test.runner import Runner\n"
        f"p = onnx_bench.light({name!r}); m = onnx.load(p)\n"
        "mod = graphgen.compile(graphgen.load(p, vjp=False), backend='numba')\n"
        "inits = {i.name for i in m.graph.initializer}\n"
        "feeds = {x.name: Runner.generate_dummy_data(x) for x in m.graph.input "
        "if x.name not in inits}\n"
        "t = time.perf_counter(); mod.forward(**feeds, **mod.init_params())\n"
        "print(time.perf_counter() - t)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **ENV, "GRAPHGEN_CACHE_DIR": cache}
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- resnet50


def child(impl, batch, rounds, forward_only):
    """Time one implementation; print JSON ``{"compile": s, "times": [...]}``."""
    import numpy as np
    import onnx
    from onnx_torch import interpreter, training_model

    rng = np.random.default_rng(0)
    model, frozen = training_model(onnx.load(light("resnet50")), batch, rng)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    labels = rng.integers(0, 1000, batch)
    t0 = time.perf_counter()
    if impl in ("numpy", "numba"):
        import graphgen

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "resnet50.onnx")
            onnx.save(model, path)
            if forward_only:
                G = graphgen.load(path, freeze=frozen, vjp=False)
            else:
                G = graphgen.load(
                    path, loss="softmax_cross_entropy", labels="labels", freeze=frozen
                )
            module = graphgen.compile(G, backend=impl)
        arrays = {"gpu_0/data_0": x, **module.init_params()}
        if forward_only:

            def f():
                return module.forward(**arrays)
        else:
            arrays["labels"] = labels

            def f():
                return module.value_and_grad(**arrays)
    elif impl == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(int(THREADS))
        weights = {
            i.name: onnx.numpy_helper.to_array(i)
            for i in model.graph.initializer
            if i.name not in frozen and i.data_type == onnx.TensorProto.FLOAT
        }
        run, params = interpreter(model, weights)
        tx, ty = torch.tensor(x), torch.tensor(labels)
        out_name = model.graph.output[0].name

        if forward_only:

            def f():
                with torch.no_grad():
                    return run({"gpu_0/data_0": tx})[out_name]
        else:

            def f():
                for p in params.values():
                    p.grad = None
                loss = F.cross_entropy(run({"gpu_0/data_0": tx})[out_name], ty)
                loss.backward()
                return float(loss)
    elif impl == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(THREADS)
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

        def f():
            return sess.run(None, {"gpu_0/data_0": x})
    else:
        raise ValueError(impl)
    f()  # first call: Numba JIT, caches, allocator warm-up
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    print(json.dumps({"compile": compile_s, "times": times}))


def run_child(impl, args, forward_only):
    cmd = [
        sys.executable,
        __file__,
        "child",
        impl,
        "--batch",
        str(args.batch),
        "--rounds",
        str(args.rounds),
    ] + (["--forward"] if forward_only else [])
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **ENV, "GRAPHGEN_CACHE_DIR": cache}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        return None, out.stderr.strip().splitlines()[-1][:200]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def resnet50(args):
    # The implementations' processes run in turn, and the whole turn repeats --passes
    # times: a machine whose speed drifts over minutes (shared hosts do) then slows
    # every implementation alike instead of whichever ran last. The table pools the
    # rounds of all passes and lists each pass's median beside them.
    rows = []
    for forward_only, impls, base in (
        (False, ["torch", "numpy", "numba"], "torch"),
        (True, ["ort", "torch", "numpy", "numba"], "ort"),
    ):
        results = {impl: None for impl in impls}
        for _ in range(args.passes):
            for impl in impls:
                res, err = run_child(impl, args, forward_only)
                if err:
                    print(f"{impl}: {err}", file=sys.stderr)
                    continue
                if results[impl] is None:
                    results[impl] = {
                        "compile": res["compile"],
                        "times": [],
                        "passes": [],
                    }
                results[impl]["times"] += res["times"]
                results[impl]["passes"].append(statistics.median(res["times"]))
        ref = results.get(base)
        for impl in impls:
            res = results[impl]
            if res is None:
                rows.append((forward_only, impl, None, None, None, None))
                continue
            med = statistics.median(res["times"])
            ratio = med / statistics.median(ref["times"]) if ref else float("nan")
            rows.append((forward_only, impl, med, ratio, res["compile"], res["passes"]))
    labels = {
        "torch": "PyTorch eager",
        "numpy": "graphgen numpy",
        "numba": "graphgen numba",
        "ort": "onnxruntime",
    }
    lines = [
        (
            f"ResNet-50, batch {args.batch}, 224×224, float32, {THREADS} threads; "
            f"median of {args.passes} passes × {args.rounds} rounds"
        ),
        "",
        "| pass | implementation | ms | ratio | each pass's median, ms | compile + first call s |",
        "|---|---|---|---|---|---|",
    ]
    for forward_only, impl, med, ratio, comp, passes in rows:
        what = (
            "forward (ratio to onnxruntime)"
            if forward_only
            else ("forward + backward (ratio to PyTorch)")
        )
        if med is None:
            lines.append(f"| {what} | {labels[impl]} | failed | | | |")
        else:
            each = ", ".join(f"{t * 1e3:.0f}" for t in passes)
            lines.append(
                f"| {what} | {labels[impl]} | {med * 1e3:.0f} | {ratio:.2f} | {each} "
                f"| {comp:.1f} |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile")
    c.add_argument("--jit", action="store_true", help="also time Numba's first call")
    r = sub.add_parser("resnet50")
    r.add_argument("--batch", type=int, default=8)
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument(
        "--passes",
        type=int,
        default=2,
        help="run every implementation this many times, in turn (default 2)",
    )
    ch = sub.add_parser("child")
    ch.add_argument("impl")
    ch.add_argument("--batch", type=int, default=8)
    ch.add_argument("--rounds", type=int, default=5)
    ch.add_argument("--forward", action="store_true")
    args = p.parse_args()
    if args.cmd == "child":
        child(args.impl, args.batch, args.rounds, args.forward)
        return
    from run import environment_text

    print(environment_text())
    print(f"- this script pins {THREADS} threads for BLAS, OpenMP, Numba, PyTorch, ORT")
    print()
    if args.cmd == "compile":
        print(compile_times(args.jit))
    else:
        print(resnet50(args))


if __name__ == "__main__":
    main()
