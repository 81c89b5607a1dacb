"""Forward mode and second order (issue 17): time and peak memory of the generated
``hvp`` against ``value_and_grad`` and of ``jvp`` against ``forward``.

    python benchmarks/hvp_bench.py            # W2, W3, W4; numpy and numba; float64
    python benchmarks/hvp_bench.py --quick    # fewer rounds

Targets (issue 17): ``hvp`` ≤ 2.5× ``value_and_grad``, ``jvp`` ≤ 1.5× ``forward``, peak
memory of ``hvp`` ≤ 1.5× that of ``value_and_grad``. ``jvp`` takes tangents of the params
(``compile(G, jvp=list(PARAMS))``; the data is held fixed, as ``hvp``'s vectors do).
Side by side, PyTorch's ``torch.func.jvp(torch.func.grad(f))`` against its
``torch.func.grad`` and ``torch.func.jvp(f)`` against ``f`` (and JAX's
``jax.jvp(jax.grad(f))``), when installed. One thread everywhere (set before NumPy is
imported); times are medians over rounds of the mean time per call; peak memory is
``tracemalloc``'s peak over one call (NumPy reports its buffers to it), after a warm-up,
for the NumPy backend only (allocations inside Numba-compiled code are not traced). The
peak includes the returned arrays: ``hvp`` returns the gradients and as many products.
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

# one thread for BLAS, OpenMP, Numba, PyTorch (before NumPy is imported)
for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

WORKLOADS = ["w2_mlp_small", "w3_mlp_large", "w4_deep_elementwise"]
TARGETS = {"hvp": 2.5, "jvp": 1.5, "memory": 1.5}


def timeit(f, rounds, min_round):
    """Median over ``rounds`` of the mean seconds per call (calls per round: enough for
    ``min_round`` seconds)."""
    for _ in range(2):
        f()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_round / 2 or n < 2:
        f()
        n += 1
    per = (time.perf_counter() - t0) / n
    calls = max(2, int(min_round / max(per, 1e-9)))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def peak_bytes(f):
    """The peak of traced allocations over one call of ``f`` (the result included)."""
    f()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = f()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del out
    return peak


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
    t = {k: timeit(f, rounds, min_round) for k, f in fns.items()}
    mem = {k: peak_bytes(fns[k]) for k in ("value_and_grad", "hvp")}
    return t, mem


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
    return {k: timeit(fn, rounds, min_round) for k, fn in fns.items()}


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
    return {k: timeit(fn, rounds, min_round) for k, fn in fns.items()}


def fmt(s):
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--workload", action="append", choices=WORKLOADS)
    args = p.parse_args(argv)
    rounds, min_round = (3, 0.05) if args.quick else (7, 0.2)
    from run import environment_text

    print(environment_text())
    print()
    print(
        "| workload | implementation | forward | jvp | jvp/forward | value_and_grad "
        "| hvp | hvp/vg | peak hvp/vg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for w in args.workload or WORKLOADS:
        rows = []
        for backend in ("numpy", "numba"):
            t, mem = graphgen_row(w, backend, rounds, min_round)
            # tracemalloc sees NumPy's buffers, not those Numba-compiled code allocates
            # (value_and_grad is one compiled function, hvp is not): no fair ratio there
            mem_ratio = mem["hvp"] / mem["value_and_grad"]
            mem_text = f"{mem_ratio:.2f}×" if backend == "numpy" else "–"
            rows.append((f"graphgen {backend}", t, mem_text))
        for label, fn in (("torch.func", torch_row), ("jax", jax_row)):
            try:
                rows.append((label, fn(w, rounds, min_round), "–"))
            except ImportError:
                pass
        for label, t, mem in rows:
            jr = t["jvp"] / t["forward"]
            hr = t["hvp"] / t["value_and_grad"]
            print(
                f"| {w} | {label} | {fmt(t['forward'])} | {fmt(t['jvp'])} | "
                f"{jr:.2f}× | {fmt(t['value_and_grad'])} | {fmt(t['hvp'])} | "
                f"{hr:.2f}× | {mem} |"
            )
    print()
    print(
        f"targets: jvp/forward ≤ {TARGETS['jvp']}×, hvp/value_and_grad ≤ "
        f"{TARGETS['hvp']}×, peak memory hvp/value_and_grad ≤ {TARGETS['memory']}× "
        "(graphgen rows; peak memory: NumPy backend, tracemalloc)"
    )


if __name__ == "__main__":
    main()
