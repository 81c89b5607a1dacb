"""Time one Adam training step: graphgen's ``train_step`` against PyTorch and JAX.

    python benchmarks/train_bench.py                 # W2, W3, the digits CNN; float32
    python benchmarks/train_bench.py --rounds 3 --no-compile

Per workload, one Adam step (forward, backward, update) of:

- graphgen ``train_step``, NumPy and Numba backends (the update inside the backward pass);
- graphgen Numba ``value_and_grad`` followed by a separate Adam update (the module's
  own update helper, after the backward pass instead of inside it); ``train_step``'s
  difference to ``value_and_grad`` alone is the optimizer's overhead;
- PyTorch eager with ``torch.optim.Adam``, ``fused=True`` and ``foreach=True``, the
  faster one counted; ``torch.compile`` of the loss (its backward and the fused Adam
  eager), when it compiles;
- JAX + optax (``jax.jit`` of grad and update), when installed;
- the floor of the update: a hand-written single-pass ``@numba.njit`` Adam over one flat
  buffer each of p, g, m and v holding as many entries as the workload's params (7
  memory streams: p, g, m, v read, p, m, v written), the least any Adam step adds to
  ``value_and_grad``.

Every implementation runs ``--calls`` calls per round, the implementations taking turns
round by round (the machine's load drifts); times are the median over ``--rounds``
rounds, after a warm-up (compilation is not timed). Peak memory: what ``tracemalloc``
sees NumPy allocate during the NumPy module's ``train_step`` against ``value_and_grad``
plus a separate update, and graphgen's planned peaks (``graphgen compile --report``).
One thread everywhere.
"""

from __future__ import annotations

import os

THREADS = "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)
os.environ.setdefault("NUMBA_NUM_THREADS", THREADS)

import argparse
import platform
import statistics
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import graphgen
from graphgen.api import report
from graphgen.codegen import optim

WORKLOADS = {
    "W2": (HERE / "specs" / "w2_mlp_small.yaml", 32),
    "W3": (HERE / "specs" / "w3_mlp_large.yaml", 512),
    "digits CNN": (REPO / "examples" / "digits_cnn.yaml", 32),
}
# targets: graphgen Numba train_step over PyTorch eager (the faster Adam)
TARGETS = {"W2": 0.8, "W3": 1.0}
LR = 1e-3
FLOOR = "floor: hand-written one-loop njit Adam over as many entries (no gradient)"


def arrays_for(module, batch, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in module.INPUTS.items():
        shape = tuple(batch if isinstance(d, str) else d for d in shape)
        if module.DTYPES[name] == "int64":
            out[name] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(module.DTYPE)
    return out


def timed(fns, calls, rounds):
    """{name: (median, min) seconds per call over the rounds}: each function warmed up
    twice, then ``rounds`` rounds in which every function runs ``calls`` calls in
    turn."""
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def adam_floor(size, dtype, seed=0):
    """A call of a hand-written single-pass njit Adam over ``size`` entries (one flat
    buffer each of p, g, m, v): the least an Adam step costs on its own."""
    import numba

    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(size)).astype(dtype)
    f = np.dtype(dtype).type
    one_minus_beta1, beta2, one_minus_beta2 = f(1 - 0.9), f(0.999), f(1 - 0.999)
    eps, step_size, bias2_sqrt = f(1e-8), f(LR / (1 - 0.9)), f(np.sqrt(1 - 0.999))

    @numba.njit(error_model="numpy")
    def loop(p, g, m, v, step_size, bias2_sqrt):
        for i in range(p.size):
            gi = g[i]
            mi = m[i] + one_minus_beta1 * (gi - m[i])
            vi = v[i] * beta2 + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] - step_size * mi / (np.sqrt(vi) / bias2_sqrt + eps)

    return lambda: loop(p, g, m, v, step_size, bias2_sqrt)


def step(module, params, state, batch):
    return module.train_step(params, state, **batch)


def value_and_grad(module, params, batch):
    return module.value_and_grad(**batch, **params)


def separate_adam(module, opt):
    """value_and_grad, then the module's own Adam helper on every param: the same
    update as train_step's, run after the backward pass instead of inside it."""
    state = {}

    def run(params, batch):
        loss, grads = module.value_and_grad(**batch, **params)
        if not state:
            state.update(module.init_state(params))
        t, lr = module._next_step(state)
        for k, p in params.items():
            m, v = state[f"exp_avg.{k}"], state[f"exp_avg_sq.{k}"]
            module._adam(p, grads[k], m, v, lr, t, 1.0)
        return loss

    return run


# ------------------------------------------------------------------------ PyTorch


def torch_loss(name, torch, F):
    if name == "W2":
        return lambda t: F.cross_entropy(
            torch.relu(t["x"] @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"], t["labels"]
        )
    if name == "W3":

        def w3(t):
            h = torch.relu(t["x"] @ t["W1"] + t["b1"])
            h = torch.relu(h @ t["W2"] + t["b2"])
            return F.cross_entropy(h @ t["W3"] + t["b3"], t["labels"])

        return w3

    def cnn(t):
        h = torch.relu(F.conv2d(t["x"], t["K1"], padding=1) + t["c1"])
        h = F.max_pool2d(h, 2)
        h = torch.relu(F.conv2d(h, t["K2"], padding=1) + t["c2"])
        h = F.max_pool2d(h, 2)
        return F.cross_entropy(h.reshape(h.shape[0], -1) @ t["W"] + t["b"], t["labels"])

    return cnn


def torch_steps(name, params, batch, compile_):
    """{label: one PyTorch Adam step}: eager with fused and foreach Adam, and
    torch.compile of the loss when it compiles."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    torch.set_num_threads(int(THREADS))
    loss_fn = torch_loss(name, torch, F)
    out = {}

    def make(kw, loss_fn):
        t = {k: torch.tensor(v) for k, v in batch.items()}
        ps = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        t.update(ps)
        opt = torch.optim.Adam(ps.values(), lr=LR, **kw)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(t).backward()
            opt.step()

        return step

    for label, kw in [("fused", {"fused": True}), ("foreach", {"foreach": True})]:
        out[f"PyTorch eager ({label} Adam)"] = make(kw, loss_fn)
    if compile_:
        step = make({"fused": True}, torch.compile(loss_fn))
        try:
            step()  # compiles
            out["torch.compile (loss) + fused Adam"] = step
        except Exception as e:  # noqa: BLE001 - a benchmark reports, never stops
            print(f"  torch.compile failed on {name}: {type(e).__name__}: {e}")
    return out


# ---------------------------------------------------------------------------- JAX


def jax_step(name, params, batch):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return {}

    def xent(logits, labels):
        picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

    def loss(p, b):
        if name == "W2":
            h = jax.nn.relu(b["x"] @ p["W1"] + p["b1"])
            return xent(h @ p["W2"] + p["b2"], b["labels"])
        if name == "W3":
            h = jax.nn.relu(b["x"] @ p["W1"] + p["b1"])
            h = jax.nn.relu(h @ p["W2"] + p["b2"])
            return xent(h @ p["W3"] + p["b3"], b["labels"])
        conv = jax.lax.conv_general_dilated
        pool = lambda h: jax.lax.reduce_window(
            h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
        )
        h = jax.nn.relu(conv(b["x"], p["K1"], (1, 1), [(1, 1), (1, 1)]) + p["c1"])
        h = jax.nn.relu(conv(pool(h), p["K2"], (1, 1), [(1, 1), (1, 1)]) + p["c2"])
        h = pool(h)
        return xent(h.reshape(h.shape[0], -1) @ p["W"] + p["b"], b["labels"])

    tx = optax.adam(LR)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    state = [p, tx.init(p)]

    @jax.jit
    def update(p, s, b):
        g = jax.grad(loss)(p, b)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def step():
        state[0], state[1] = update(state[0], state[1], b)
        jax.block_until_ready(state[0])

    return {"JAX + optax (jit)": step}


# -------------------------------------------------------------------------- main


def peak_measured(f):
    tracemalloc.start()
    tracemalloc.reset_peak()
    f()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def machine_line():
    import numba

    try:
        import torch

        tv = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        tv = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                line.split(":", 1)[1].strip() for line in f if "model name" in line
            )
    except (OSError, StopIteration):
        pass
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    return (
        f"{cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, NumPy "
        f"{np.__version__} ({blas}, {THREADS} thread), Numba {numba.__version__} "
        f"({THREADS} thread){tv}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--only", nargs="*", default=list(WORKLOADS), help="workloads")
    args = p.parse_args()
    print(f"machine: {machine_line()}")
    print(
        f"one Adam step (lr {LR}), {args.dtype}; {args.rounds} rounds of {args.calls} "
        "calls, the implementations interleaved: median (min) of the rounds"
    )
    opt = optim.optimizer("adam", lr=LR)
    table = []
    for name in args.only:
        spec, batch_size = WORKLOADS[name]
        G = graphgen.load(spec)
        mods = {
            b: graphgen.compile(G, backend=b, dtype=args.dtype, optimizer=opt)
            for b in ("numpy", "numba")
        }
        batch = arrays_for(mods["numpy"], batch_size)
        start = mods["numpy"].init_params(seed=0)
        fns = {}
        for b, m in mods.items():
            params = {k: v.copy() for k, v in start.items()}
            state = m.init_state(params)
            fns[f"graphgen {b} train_step"] = partial(step, m, params, state, batch)
        nb = mods["numba"]
        params = {k: v.copy() for k, v in start.items()}
        fns["graphgen numba value_and_grad alone"] = partial(
            value_and_grad, nb, params, batch
        )
        params = {k: v.copy() for k, v in start.items()}
        fns["graphgen numba value_and_grad + separate Adam"] = partial(
            separate_adam(nb, opt), params, batch
        )
        size = sum(v.size for v in start.values())
        fns[FLOOR] = adam_floor(size, nb.DTYPE)
        fns.update(torch_steps(name, start, batch, not args.no_compile))
        fns.update(jax_step(name, start, batch))
        times = timed(fns, args.calls, args.rounds)
        # peak memory, NumPy module: measured (tracemalloc) and planned (--report)
        npm = mods["numpy"]
        params = {k: v.copy() for k, v in start.items()}
        state = npm.init_state(params)
        npm.train_step(params, state, **batch)
        fused = peak_measured(partial(step, npm, params, state, batch))
        sep_np = separate_adam(npm, opt)
        sep_np(params, batch)
        separate = peak_measured(partial(sep_np, params, batch))
        planned = report(
            G, dtype=args.dtype, sizes={"batch": batch_size}, optimizer=opt
        ).splitlines()[-2]
        table.append((name, batch_size, size, times, fused, separate, planned))

    for name, batch_size, size, both, fused, separate, planned in table:
        print(f"\n### {name} (batch {batch_size})\n")
        print("| implementation | ms / step, median (min) | vs PyTorch eager |")
        print("|---|---:|---:|")
        for i, stat in enumerate(("median", "min")):
            times = {k: v[i] for k, v in both.items()}
            torch_best = min(
                (v for k, v in times.items() if k.startswith("PyTorch eager")),
                default=None,
            )
            nb = times["graphgen numba train_step"]
            vg = times["graphgen numba value_and_grad alone"]
            if i == 0:
                for k, (med, low) in both.items():
                    ratio = f"{med / torch_best:.2f}x" if torch_best else "–"
                    print(f"| {k} | {med * 1e3:.3f} ({low * 1e3:.3f}) | {ratio} |")
                print()
            floor = times[FLOOR]
            streams = 7 * size * np.dtype(args.dtype).itemsize
            target = TARGETS.get(name)
            if torch_best and target:
                ok = "met" if nb / torch_best <= target else "NOT met"
                print(
                    f"{stat}s: target Numba train_step <= {target}x PyTorch eager: "
                    f"{nb / torch_best:.2f}x ({ok})"
                )
            print(
                f"{stat}s: optimizer overhead (Numba train_step / value_and_grad "
                f"alone - 1) {nb / vg - 1:+.1%} (target <= 10%); separate update "
                f"{times['graphgen numba value_and_grad + separate Adam'] / vg - 1:+.1%}"
                f"; the floor, one flat njit Adam over the {size:,d} params "
                f"({streams / 1e6:.2f} MB of memory streams, "
                f"{streams / floor / 1e9:.0f} GB/s), {floor / vg:+.1%}"
            )
        print(
            f"peak memory (NumPy module, tracemalloc): train_step {fused:,d} B vs "
            f"value_and_grad + separate update {separate:,d} B "
            f"({fused / separate:.2f}x)"
        )
        print(f"planned (graphgen --report): {planned}")


if __name__ == "__main__":
    main()
