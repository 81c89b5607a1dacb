"""Transformer training step: graphgen's NumPy and Numba modules against PyTorch eager.

    python benchmarks/transformer_bench.py            # GPT-2-small shape + small models
    python benchmarks/transformer_bench.py --small    # a quicker decoder shape
    python benchmarks/transformer_bench.py --profile  # also cProfile one NumPy step

Issue 15's targets. A nanoGPT-style decoder (tests/transformer_models.py: causal mask
kept as a buffer, tied embeddings) is built in PyTorch at the GPT-2-small-like shape
(6 layers, width 384, 6 heads, context 128, vocab 4096, batch 8), exported with
``torch.onnx.export(dynamo=False, opset_version=17)`` and compiled by graphgen with a
softmax cross-entropy loss. One training step (loss + every parameter's gradient) is
timed for the generated NumPy module, the generated Numba module and PyTorch eager on
the model that was exported; forward alone for the same three and onnxruntime. The small
validation models of tests/transformer_models.py (nanoGPT, ``nn.TransformerEncoder``,
and GPT-2 from ``transformers`` when installed, which needs the dynamo exporter; width
32, 2 layers, batch 8) are timed the same way. Losses are checked against PyTorch's
before anything is timed.

Everything runs in one process with 2 threads (BLAS, OpenMP, Numba, PyTorch, ORT) and
glibc malloc kept from returning freed buffers to the OS; the implementations are called
in turn within each round (so a shared machine's drift slows all alike), and times are
medians over rounds. onnxruntime-training is not timed: its wheel conflicts with
``onnxruntime`` in one environment (it would need its own environment, and its training
artifacts the optional LayerNormalization outputs named), so it is not installed here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE), str(REPO / "tests")]

THREADS = "2"
ENV = {
    "OMP_NUM_THREADS": THREADS,
    "OPENBLAS_NUM_THREADS": THREADS,
    "MKL_NUM_THREADS": THREADS,
    "NUMBA_NUM_THREADS": THREADS,
    # idle thread pools sleep instead of spinning: the implementations take turns in
    # one process, and a spinning pool (PyTorch's OpenMP, ORT's) steals the 2 cores
    "OMP_WAIT_POLICY": "PASSIVE",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "PYTHONHASHSEED": "0",
}
# (layers, width, heads, context = T, vocab, batch)
FULL = {"LAYERS": 6, "WIDTH": 384, "HEADS": 6, "CONTEXT": 128, "VOCAB": 4096}
SMALL = {"LAYERS": 2, "WIDTH": 128, "HEADS": 4, "CONTEXT": 64, "VOCAB": 1024}
BATCH = 8
TARGETS = {"numba": 1.0, "numpy": 1.5}  # training step, ratio to PyTorch eager
FWD_TARGET = 1.5  # forward, ratio to onnxruntime
LABELS = {
    "torch": "PyTorch eager",
    "numpy": "graphgen numpy",
    "numba": "graphgen numba",
    "ort": "onnxruntime",
}


def configure(dims, batch, seq):
    """Set tests/transformer_models.py's shape constants (its models read them)."""
    import transformer_models as tm

    for k, v in dims.items():
        setattr(tm, k, v)
    tm.BATCH, tm.T = batch, seq
    return tm


def build(name, dims, batch, seq, workdir):
    """Build model ``name`` in PyTorch, export it, compile it: a dict of callables."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import graphgen

    tm = configure(dims, batch, seq)
    _, models = tm._torch()
    torch.manual_seed(0)
    model = models[name]().eval()  # no dropout: the exported graph has none
    with torch.no_grad():
        for pname, p in model.named_parameters():
            norm = ("norm" in pname or "ln_" in pname) and pname.endswith("weight")
            p.copy_((1.0 if norm else 0.0) + 0.02 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tm.VOCAB, size=(batch, seq))
    labels = rng.integers(0, tm.VOCAB, size=(batch, seq))
    x, y = torch.tensor(ids), torch.tensor(labels)
    path = os.path.join(workdir, f"{name}.onnx")
    with warnings.catch_warnings():  # the tracer's notes on Python-level shape math
        warnings.simplefilter("ignore")
        if name in ("gpt2", "llama"):  # transformers' models need dynamo
            kw = {"dynamo": True, "optimize": True}
        else:
            kw = {"dynamo": False, "opset_version": 17}
        torch.onnx.export(
            model, (x,), path, input_names=["idx"], output_names=["logits"], **kw
        )
    params = list(model.parameters())
    vocab = tm.VOCAB

    def torch_step():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(
            model(x).reshape(-1, vocab), y.reshape(-1)
        )
        loss.backward()
        return loss.item()

    def torch_fwd():
        with torch.no_grad():
            return model(x)

    fns, info = {"torch": (torch_step, torch_fwd)}, {}
    t0 = time.perf_counter()
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    info["load_s"] = time.perf_counter() - t0
    Gf = graphgen.load(path, vjp=False)  # forward alone: logits, no loss
    for backend in ("numpy", "numba"):
        t0 = time.perf_counter()
        mod = graphgen.compile(G, backend=backend)
        gen = time.perf_counter() - t0
        arrays = {"idx": ids, "labels": labels, **mod.init_params()}
        t0 = time.perf_counter()
        loss = mod.value_and_grad(**arrays)[0]
        info[backend] = (gen, time.perf_counter() - t0, float(loss))
        fmod = graphgen.compile(Gf, backend=backend)
        fwd_arrays = {"idx": ids, **fmod.init_params()}
        fns[backend] = (
            lambda mod=mod, a=arrays: mod.value_and_grad(**a),
            lambda mod=fmod, a=fwd_arrays: mod.forward(**a),
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(THREADS)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"idx": ids.astype(np.int64)}
    fns["ort"] = (None, lambda: sess.run(None, feed))
    ref = torch_step()
    info["torch_loss"] = ref
    logits = sess.run(None, feed)[0]
    want = torch_fwd().numpy()
    info["ort_err"] = float(np.abs(logits - want).max() / np.abs(want).max())
    for backend in ("numpy", "numba"):
        got = info[backend][2]
        if abs(got - ref) > 1e-4 * abs(ref):
            raise SystemExit(f"{name}: {backend} loss {got} != PyTorch's {ref}")
    info["params"] = sum(p.numel() for p in params)
    return fns, info


def timeit(fns, rounds, min_round):
    """Median seconds per call of each function; the functions take turns."""
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            n, t0 = 0, time.perf_counter()
            while True:
                f()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= min_round:
                    break
            times[k].append(dt / n)
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows):
    lines = [
        "| model | pass | implementation | ms | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for model, what, impl, ms, ratio, target in rows:
        lines.append(f"| {model} | {what} | {impl} | {ms} | {ratio} | {target} |")
    return "\n".join(lines)


def bench(name, label, dims, seq, args, rows, workdir):
    fns, info = build(name, dims, BATCH, seq, workdir)
    print(
        f"{label}: {info['params']:,} parameters; graphgen import "
        f"{info['load_s']:.1f} s; loss {info['torch_loss']:.5f} (PyTorch), "
        + ", ".join(
            f"{b} {info[b][2]:.5f} (generate {info[b][0]:.1f} s, first call "
            f"{info[b][1]:.1f} s)"
            for b in ("numpy", "numba")
        )
        + f"; onnxruntime logits rel. err {info['ort_err']:.1e}",
        flush=True,
    )
    step = timeit({k: v[0] for k, v in fns.items() if v[0]}, args.rounds, args.min)
    fwd = timeit({k: v[1] for k, v in fns.items()}, args.rounds, args.min)
    for impl in ("torch", "numpy", "numba"):
        r = step[impl] / step["torch"]
        target = TARGETS.get(impl)
        mark = "" if target is None else f"≤ {target} " + ("✓" if r <= target else "✗")
        rows.append(
            (
                label,
                "train step",
                LABELS[impl],
                f"{step[impl] * 1e3:.1f}",
                f"{r:.2f}",
                mark,
            )
        )
    for impl in ("ort", "torch", "numpy", "numba"):
        r = fwd[impl] / fwd["ort"]
        mark = (
            ""
            if impl == "ort" or impl == "torch"
            else (f"≤ {FWD_TARGET} " + ("✓" if r <= FWD_TARGET else "✗"))
        )
        rows.append(
            (label, "forward", LABELS[impl], f"{fwd[impl] * 1e3:.1f}", f"{r:.2f}", mark)
        )
    rows.append((label, "train step", "onnxruntime-training", "not installed", "", ""))
    return fns


KINDS = [  # statement kinds of a generated module, first match wins
    ("matmul", (" @ ", "np.matmul", "np.dot", "np.einsum")),
    ("softmax / cross-entropy", ("_softmax", "_xent")),
    ("layer norm", ("_layer_norm",)),
    ("gather / scatter-add", ("_scatter_add", "np.take", ".at(")),
    ("reductions", (".sum(", "np.sum", ".mean(", "np.mean", "np.max")),
]


def profile(fns, top):
    """Where one NumPy training step spends its time: cProfile by function, then the
    statements of ``value_and_grad`` (whose NumPy calls are inline expressions that
    cProfile books to the function itself), timed line by line with ``sys.settrace``."""
    import cProfile
    import linecache
    import pstats
    from collections import Counter

    f = fns["numpy"][0]
    f()
    prof = cProfile.Profile()
    prof.enable()
    f()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    print(f"\ncProfile of one NumPy training step ({total * 1e3:.0f} ms), by tottime:")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, func), (_, ncalls, tottime, _, _) in rows:
        where = func if file == "~" else f"{func} ({Path(file).name}:{line})"
        print(f"  {tottime * 1e3:8.1f} ms {100 * tottime / total:5.1f}%  {where}")

    spent, state = Counter(), {}

    def local(frame, event, arg):
        now = time.perf_counter()
        if "at" in state:
            spent[state["at"]] += now - state["t"]
        if event == "line":
            state["at"], state["t"] = (frame.f_code.co_filename, frame.f_lineno), now
        else:
            state.pop("at", None)
        return local

    def tracer(frame, event, arg):
        code = frame.f_code
        if code.co_name == "value_and_grad" and "graphgen_" in code.co_filename:
            return local
        return None

    sys.settrace(tracer)
    try:
        f()
    finally:
        sys.settrace(None)
    total = sum(spent.values())
    print(f"\nvalue_and_grad line by line ({total * 1e3:.0f} ms), slowest statements:")
    for (file, line), t in spent.most_common(top):
        text = linecache.getline(file, line).strip()
        if text.endswith(("(", "[", "=")):
            text += " " + linecache.getline(file, line + 1).strip()
        print(f"  {t * 1e3:8.1f} ms {100 * t / total:5.1f}%  {text[:110]}")
    kinds = Counter()
    for (file, line), t in spent.items():
        text = linecache.getline(file, line)
        kind = next((k for k, marks in KINDS if any(m in text for m in marks)), "other")
        kinds[kind] += t
    print(
        "  by kind: "
        + ", ".join(f"{k} {100 * t / total:.0f}%" for k, t in kinds.most_common())
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a quicker decoder shape")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min", type=float, default=0.2, help="min seconds per round")
    p.add_argument(
        "--models",
        default="nanogpt,encoder,gpt2",
        help="small validation models to time ('' for none)",
    )
    p.add_argument("--profile", action="store_true", help="cProfile one NumPy step")
    args = p.parse_args()
    if any(os.environ.get(k) != v for k, v in ENV.items()):  # before NumPy loads
        os.environ.update(ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    import torch

    torch.set_num_threads(int(THREADS))
    import run

    run.ENV = ENV  # the machine line lists this script's settings, not run.py's
    print(
        run.environment_text().replace(
            "child env (set by run.py)", "env (set by this script)"
        )
    )
    print(
        f"- torch.set_num_threads({THREADS}); onnxruntime intra_op {THREADS}, no spinning"
    )
    print(
        "- onnxruntime-training: not installed (it conflicts with onnxruntime in one "
        "environment), so its training step is not timed"
    )
    print(f"- load average: {os.getloadavg()[0]:.1f}; {args.rounds} rounds, medians\n")
    dims = SMALL if args.small else FULL
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.environ.setdefault("GRAPHGEN_CACHE_DIR", workdir)
        label = (
            f"decoder {dims['LAYERS']}L w{dims['WIDTH']} h{dims['HEADS']} "
            f"T{dims['CONTEXT']} V{dims['VOCAB']} b{BATCH}"
        )
        fns = bench("nanogpt", label, dims, dims["CONTEXT"], args, rows, workdir)
        print("\n" + table(rows), flush=True)
        if args.profile:
            profile(fns, 12)
        del fns
        import importlib.util

        for name in filter(None, args.models.split(",")):
            if name in ("gpt2", "llama") and not importlib.util.find_spec(
                "transformers"
            ):
                print(f"{name}: transformers is not installed; skipped")
                continue
            small = {"LAYERS": 2, "WIDTH": 32, "HEADS": 4, "CONTEXT": 16, "VOCAB": 50}
            try:
                bench(name, f"{name} 2L w32 T8 b{BATCH}", small, 8, args, rows, workdir)
            except Exception as e:  # noqa: BLE001 - report it, keep the other rows
                print(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
