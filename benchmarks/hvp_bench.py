"""Forward mode and second order (issue 17): time and peak memory of the generated
``hvp`` against ``value_and_grad`` and of ``jvp`` against ``forward``.

    python benchmarks/hvp_bench.py            # W2, W3, W4; numpy and numba; float64
    python benchmarks/hvp_bench.py --quick    # fewer rounds

Targets (issue 17): ``hvp`` ≤ 2.5× ``value_and_grad``, ``jvp`` ≤ 1.5× ``forward``, peak
memory of ``hvp`` ≤ 1.5× that of ``value_and_grad``. ``jvp`` takes tangents of the params
(``compile(G, jvp=list(PARAMS))``; the data is held fixed, as ``hvp``'s vectors do).
Side by side, PyTorch's ``torch.func.jvp(torch.func.grad(f))`` against its
``torch.func.grad`` and ``torch.func.jvp(f)`` against ``f`` (and JAX's
``jax.jvp(jax.grad(f))``), when installed.

Floors. The "fewest GEMM multiply-adds" row counts them (:func:`gemm_floor`: a matmul
whose operands both have tangents is three GEMMs in jvp for the forward's one, nine in
hvp for value_and_grad's three), the ratio matmul-bound workloads cannot go below. The
"hand-written NumPy" row times ``benchmarks/handwritten.py``'s ``FORWARD`` and ``JVP``:
the fewest GEMMs and passes we could write for the same jvp, so its jvp/forward is what
no NumPy jvp goes much below. Peak memory counts the arrays passed in (``hvp`` also
takes the vectors) plus ``tracemalloc``'s peak over one call (NumPy reports its buffers
to it; the returned arrays included: ``hvp`` returns the gradients and as many
products); its floor is what each call must hold at its end, arguments plus results.
NumPy backend only (allocations inside Numba-compiled code are not traced).

One thread everywhere and glibc malloc kept from handing buffers back to the OS (the
settings of ``run.py``, applied by re-executing this script before NumPy loads; without
them every large result is fresh pages from ``mmap``, which costs ``hvp``, with twice the
results, more than ``value_and_grad``; ``--inherit-env`` keeps the caller's). Times are
medians over rounds of the mean time per call, the functions of a row taking turns within
each round; a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from run import ENV

# one thread for BLAS, OpenMP, Numba, PyTorch; malloc keeps freed buffers (read at start)
if "--inherit-env" not in sys.argv and any(
    os.environ.get(k) != v for k, v in ENV.items()
):
    os.environ.update(ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])
for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

WORKLOADS = ["w2_mlp_small", "w3_mlp_large", "w4_deep_elementwise"]
TARGETS = {"hvp": 2.5, "jvp": 1.5, "memory": 1.5}


def timeit(fns, rounds, min_round):
    """``{name: [mean seconds per call, one per round]}``: in each of ``rounds`` rounds
    every function takes its turn (calls per turn: enough for ``min_round`` seconds), so
    a change of load hits them alike."""
    calls = {}
    for k, f in fns.items():
        for _ in range(2):
            f()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_round / 2 or n < 2:
            f()
            n += 1
        per = (time.perf_counter() - t0) / n
        calls[k] = max(2, int(min_round / max(per, 1e-9)))
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                f()
            times[k].append((time.perf_counter() - t0) / calls[k])
    return times


def ratio(times, a, b):
    """The median over rounds of ``a``'s time over ``b``'s in the same round."""
    if a not in times or b not in times:
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def nbytes(*trees):
    """The bytes of the arrays in (nested dicts, tuples of) ``trees``."""
    total = 0
    for t in trees:
        if isinstance(t, dict):
            total += nbytes(*t.values())
        elif isinstance(t, (tuple, list)):
            total += nbytes(*t)
        else:
            total += getattr(t, "nbytes", 0)
    return total


def peak_bytes(f):
    """``(peak, returned)``: the peak of traced allocations over one call of ``f`` (the
    result included) and the bytes of the arrays it returned."""
    f()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = f()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    returned = nbytes(out)
    del out
    return peak, returned


def graphgen_row(workload, backend, rounds, min_round):
    import handwritten
    import numpy as np

    import graphgen
    from graphgen.check import random_arrays

    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    ref = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes=handwritten.SIZES[workload])
    arrays.update(ref.init_params(0))
    m = graphgen.compile(G, backend, jvp=list(ref.PARAMS), hvp=True)
    rng = np.random.default_rng(1)
    tangents = {k: rng.standard_normal(arrays[k].shape) for k in m.TANGENTS}
    vectors = {k: rng.standard_normal(arrays[k].shape) for k in m.WRT}
    fns = {
        "forward": lambda: m.forward(**arrays),
        "jvp": lambda: m.jvp(tangents, **arrays),
        "value_and_grad": lambda: m.value_and_grad(**arrays),
        "hvp": lambda: m.hvp(vectors, **arrays),
    }
    t = timeit(fns, rounds, min_round)
    # what a call holds: its arguments, plus its allocations at their peak (or, for the
    # floor, only its results)
    args = {"value_and_grad": nbytes(arrays), "hvp": nbytes(arrays, vectors)}
    mem = {}
    for k, held in args.items():
        peak, returned = peak_bytes(fns[k])
        mem[k] = {"args": held, "peak": peak, "returned": returned}
    return t, mem


def gemm_floor(workload):
    """``(jvp/forward, hvp/value_and_grad)`` in GEMM multiply-adds, at the fewest each
    needs, or None without matmuls. Each matmul y = x·W of an activation x by a param W
    (n·k·m multiply-adds) costs the forward 1 of them; jvp y, ẏ = x·Ẇ (+ ẋ·W where x
    depends on a param); value_and_grad y, W̄ = xᵀ·ȳ (+ x̄ = ȳ·Wᵀ); hvp jvp's, W̄ and its
    tangent xᵀ·ȳ̇ (+ ẋᵀ·ȳ), (+ x̄ and its tangent ȳ̇·Wᵀ + ȳ·Ẇᵀ)."""
    import handwritten
    import networkx as nx

    import graphgen
    from graphgen import dims
    from graphgen import graph as g

    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    sizes = handwritten.SIZES[workload]
    params = {n for n in G if G.nodes[n][g.KIND] == g.PARAM}
    macs = dict.fromkeys(("forward", "jvp", "value_and_grad", "hvp"), 0)
    for n in G:
        if G.nodes[n].get(g.OP) != "matmul":
            continue
        x, w = g.operands(G, n)
        assert w in params, f"{n}: a matmul by a param is what this counts"
        (b, k), (_, m) = (dims.concrete(G.nodes[p][g.SHAPE], sizes) for p in (x, w))
        nkm, v = b * k * m, int(bool(nx.ancestors(G, x) & params))
        macs["forward"] += nkm
        macs["jvp"] += (2 + v) * nkm
        macs["value_and_grad"] += (2 + v) * nkm
        macs["hvp"] += (4 + 5 * v) * nkm
    if not macs["forward"]:
        return None
    return macs["jvp"] / macs["forward"], macs["hvp"] / macs["value_and_grad"]


def handwritten_row(workload, rounds, min_round):
    """The floor: hand-written NumPy forward and jvp (and value_and_grad)."""
    import handwritten
    import numpy as np

    import graphgen
    from graphgen.check import random_arrays

    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    ref = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes=handwritten.SIZES[workload])
    arrays.update(ref.init_params(0))
    rng = np.random.default_rng(1)
    tangents = {k: rng.standard_normal(arrays[k].shape) for k in ref.PARAMS}
    fwd, jvp = handwritten.FORWARD[workload], handwritten.JVP[workload]
    fns = {
        "forward": lambda: fwd(**arrays),
        "jvp": lambda: jvp(tangents, **arrays),
        "value_and_grad": lambda: handwritten.value_and_grad(workload, arrays),
    }
    return timeit(fns, rounds, min_round)


def torch_row(workload, rounds, min_round):
    import handwritten
    import numpy as np
    import torch
    import torch.nn.functional as F
    from frameworks import loss_fn
    from torch.func import grad, jvp

    import graphgen
    from graphgen.check import random_arrays

    torch.set_num_threads(1)
    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    ref = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes=handwritten.SIZES[workload])
    arrays.update(ref.init_params(0))
    import types

    ns = types.SimpleNamespace(
        sigmoid=torch.sigmoid,
        relu=torch.relu,
        tanh=torch.tanh,
        sin=torch.sin,
        mean=torch.mean,
        sum=torch.sum,
        xent=F.cross_entropy,
    )
    data = {k: torch.from_numpy(v) for k, v in arrays.items() if k not in ref.PARAMS}
    ps = {k: torch.from_numpy(arrays[k]) for k in ref.PARAMS}
    rng = np.random.default_rng(1)
    vs = {k: torch.from_numpy(rng.standard_normal(arrays[k].shape)) for k in ps}

    def f(p):
        return loss_fn(workload, ns, {**data, **p})

    g = grad(f)
    fns = {
        "forward": lambda: f(ps),
        "jvp": lambda: jvp(f, (ps,), (vs,)),
        "value_and_grad": lambda: g(ps),
        "hvp": lambda: jvp(g, (ps,), (vs,)),
    }
    return timeit(fns, rounds, min_round)


def jax_row(workload, rounds, min_round):
    import handwritten
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)

    import jax.numpy as jnp
    from frameworks import jax_namespace, loss_fn

    import graphgen
    from graphgen.check import random_arrays

    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    ref = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes=handwritten.SIZES[workload])
    arrays.update(ref.init_params(0))

    ns = jax_namespace()
    data = {k: jnp.asarray(v) for k, v in arrays.items() if k not in ref.PARAMS}
    ps = {k: jnp.asarray(arrays[k]) for k in ref.PARAMS}
    rng = np.random.default_rng(1)
    vs = {k: jnp.asarray(rng.standard_normal(arrays[k].shape)) for k in ps}

    def f(p):
        return loss_fn(workload, ns, {**data, **p})

    fwd = jax.jit(f)
    jv = jax.jit(lambda p, v: jax.jvp(f, (p,), (v,)))
    vg = jax.jit(jax.grad(f))
    hv = jax.jit(lambda p, v: jax.jvp(jax.grad(f), (p,), (v,)))
    fns = {
        "forward": lambda: fwd(ps).block_until_ready(),
        "jvp": lambda: jax.block_until_ready(jv(ps, vs)),
        "value_and_grad": lambda: jax.block_until_ready(vg(ps)),
        "hvp": lambda: jax.block_until_ready(hv(ps, vs)),
    }
    return timeit(fns, rounds, min_round)


def fmt(s):
    if s is None:
        return "–"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def times_text(t, k):
    return fmt(statistics.median(t[k])) if k in t else "–"


def ratio_text(r):
    return "–" if r is None else f"{r:.2f}×"


def mb(n):
    return f"{n / 2**20:.2f} MB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--workload", action="append", choices=WORKLOADS)
    p.add_argument(
        "--inherit-env",
        action="store_true",
        help="keep the caller's threads and malloc settings (default: run.py's)",
    )
    args = p.parse_args(argv)
    rounds, min_round = (3, 0.05) if args.quick else (7, 0.2)
    from run import environment_text

    lines = environment_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- child env (set by run.py)"):
            if args.inherit_env:
                got = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ENV)
                lines[i] = f"- env (the caller's, --inherit-env): {got}"
            else:
                lines[i] = line.replace("child env (set by run.py)", "env (set here)")
    print("\n".join(lines))
    print()
    print(
        "| workload | implementation | forward | jvp | jvp/forward | value_and_grad "
        "| hvp | hvp/vg | peak hvp/vg (floor) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    memory = []
    for w in args.workload or WORKLOADS:
        rows = []
        floor = gemm_floor(w)
        if floor is not None:
            rows.append(("fewest GEMM multiply-adds (floor)", {"ratios": floor}, "–"))
        rows.append(
            ("hand-written NumPy (floor)", handwritten_row(w, rounds, min_round), "–")
        )
        for backend in ("numpy", "numba"):
            t, mem = graphgen_row(w, backend, rounds, min_round)
            # tracemalloc sees NumPy's buffers, not those Numba-compiled code allocates
            # (value_and_grad is one compiled function, hvp is not): no fair ratio there
            if backend == "numpy":
                vg, hv = mem["value_and_grad"], mem["hvp"]
                ours = (hv["args"] + hv["peak"]) / (vg["args"] + vg["peak"])
                floor = (hv["args"] + hv["returned"]) / (vg["args"] + vg["returned"])
                mem_text = f"{ours:.2f}× ({floor:.2f}×)"
                memory.append((w, mem))
            else:
                mem_text = "–"
            rows.append((f"graphgen {backend}", t, mem_text))
        for label, fn in (("torch.func", torch_row), ("jax", jax_row)):
            try:
                rows.append((label, fn(w, rounds, min_round), "–"))
            except ImportError:
                pass
        for label, t, mem in rows:
            if "ratios" in t:  # counted, not timed
                jr, hr = t["ratios"]
                print(
                    f"| {w} | {label} | – | – | {ratio_text(jr)} | – | – | "
                    f"{ratio_text(hr)} | – |"
                )
                continue
            print(
                f"| {w} | {label} | {times_text(t, 'forward')} | "
                f"{times_text(t, 'jvp')} | {ratio_text(ratio(t, 'jvp', 'forward'))} | "
                f"{times_text(t, 'value_and_grad')} | {times_text(t, 'hvp')} | "
                f"{ratio_text(ratio(t, 'hvp', 'value_and_grad'))} | {mem} |",
                flush=True,
            )
    print()
    print(
        f"targets: jvp/forward ≤ {TARGETS['jvp']}×, hvp/value_and_grad ≤ "
        f"{TARGETS['hvp']}×, peak memory hvp/value_and_grad ≤ {TARGETS['memory']}× "
        "(graphgen rows; peak memory: NumPy backend, tracemalloc)"
    )
    print()
    print(
        "Peak memory, graphgen numpy: arguments + the call's peak allocations (floor:"
    )
    print("arguments + returned arrays).")
    print()
    print(
        "| workload | function | arguments | returned | peak allocated | "
        "arguments + peak | floor |"
    )
    print("|---|---|---|---|---|---|---|")
    for w, mem in memory:
        for k in ("value_and_grad", "hvp"):
            m = mem[k]
            print(
                f"| {w} | {k} | {mb(m['args'])} | {mb(m['returned'])} | "
                f"{mb(m['peak'])} | {mb(m['args'] + m['peak'])} | "
                f"{mb(m['args'] + m['returned'])} |"
            )


if __name__ == "__main__":
    main()
