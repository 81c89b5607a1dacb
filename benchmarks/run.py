"""Time ``value_and_grad`` of the five workloads for every implementation, side by side.

    python benchmarks/run.py            # full run, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # smoke test: fewer rounds, W1/W2/W4, float64

Each (workload, dtype, implementation) runs in its own process with one thread for BLAS,
OpenMP, Numba, PyTorch and XLA, and glibc malloc pinned not to hand freed buffers back to
the OS (see ENV below). A child times compile/JIT separately (generation + import + first
call), warms up, then reports the median over rounds of the mean time per call. Ratios are
to the hand-written NumPy backprop of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

WORKLOADS = [
    "w1_tiny",
    "w2_mlp_small",
    "w3_mlp_large",
    "w4_deep_elementwise",
    "w5_fanout",
]
IMPLS = ["hand", "numpy", "numba", "torch", "jax"]
LABELS = {
    "hand": "hand-written NumPy",
    "numpy": "graphgen numpy",
    "numba": "graphgen numba",
    "torch": "PyTorch eager",
    "jax": "jax.jit(value_and_grad)",
}
# Targets (ratio to hand-written NumPy) from the issue.
TARGETS = {
    ("w1_tiny", "numpy"): 1.2,
    ("w1_tiny", "numba"): 0.2,
    ("w2_mlp_small", "numpy"): 1.1,
    ("w2_mlp_small", "numba"): 0.8,
    ("w3_mlp_large", "numpy"): 1.05,
    ("w3_mlp_large", "numba"): 1.05,
    ("w4_deep_elementwise", "numpy"): 1.1,
    ("w4_deep_elementwise", "numba"): 0.5,
    ("w5_fanout", "numpy"): 1.1,
    ("w5_fanout", "numba"): 0.3,
}
THREADS = "1"
ENV = {
    "OMP_NUM_THREADS": THREADS,
    "OPENBLAS_NUM_THREADS": THREADS,
    "MKL_NUM_THREADS": THREADS,
    "NUMBA_NUM_THREADS": THREADS,
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    # keep freed buffers in the heap: no trimming, no mmap for blocks up to 32 MiB
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "PYTHONHASHSEED": "0",
}


# ---------------------------------------------------------------------------- child


def build(impl, workload, dtype):
    """``(f, compile_seconds)``: ``f()`` computes the loss and gradients."""
    import handwritten
    import numpy as np

    import graphgen
    from graphgen.check import random_arrays

    G = graphgen.load(HERE / "specs" / f"{workload}.yaml")
    sizes = handwritten.SIZES[workload]
    arrays = random_arrays(G, seed=0, sizes=sizes, dtype=dtype)
    ref = graphgen.compile(G, dtype=dtype)
    arrays.update(ref.init_params(0))
    params = list(ref.PARAMS)
    t0 = time.perf_counter()
    if impl in ("numpy", "numba"):
        mod = graphgen.compile(G, backend=impl, dtype=dtype)

        def f():
            return mod.value_and_grad(**arrays)
    elif impl == "hand":
        fn = handwritten.WORKLOADS[workload]

        def f():
            return fn(**arrays)
    elif impl == "torch":
        import frameworks

        f = frameworks.torch_impl(workload, arrays, params, threads=int(THREADS))
    elif impl == "jax":
        import frameworks

        f = frameworks.jax_impl(workload, arrays, params, dtype)
    else:
        raise SystemExit(f"unknown implementation {impl}")
    loss = f()[0]
    compile_s = time.perf_counter() - t0
    if impl not in ("numpy", "numba"):  # nothing generated or JIT-compiled ahead
        compile_s = compile_s if impl == "jax" else 0.0
    np.asarray(loss)
    return f, compile_s


def child(impl, workload, dtype, rounds, min_round):
    try:
        f, compile_s = build(impl, workload, dtype)
    except ImportError as e:
        print(json.dumps({"missing": str(e)}))
        return
    for _ in range(3):
        f()
    # calls per round: enough for min_round seconds
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < min_round / 2 or n < 2:
        f()
        n += 1
    per = (time.perf_counter() - t0) / n
    calls = max(1, int(min_round / per))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t0) / calls)
    print(
        json.dumps(
            {
                "median": statistics.median(times),
                "min": min(times),
                "calls": calls,
                "rounds": rounds,
                "compile": compile_s,
            }
        )
    )


# --------------------------------------------------------------------------- parent


HAND_WRITTEN = "## Targets met and missed"


def _hand_written(path):
    """The analysis section a person wrote at the end of an earlier results file (from
    its heading on), kept when the tables above it are rewritten; "" if there is none."""
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    at = old.find(HAND_WRITTEN)
    return "\n" + old[at:] if at >= 0 else ""


def _openblas_core():
    """The OpenBLAS kernel family NumPy's BLAS chose at load time ("SkylakeX", "Haswell",
    ...). The build configuration names only the oldest target of a DYNAMIC_ARCH build;
    the family in use follows the CPU and OPENBLAS_CORETYPE."""
    import ctypes
    import glob

    import numpy as np

    root = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown"


def environment_text():
    import io
    from contextlib import redirect_stdout

    import numpy as np

    lines = [
        (
            f"- machine: {platform.machine()}, {_cpu()}, {os.cpu_count()} CPUs; "
            f"Python {platform.python_version()}, NumPy {np.__version__}"
        )
    ]
    try:
        import numba
        from numba.core import config

        lines.append(
            f"- Numba {numba.__version__}; SVML in use: {bool(config.USING_SVML)}"
        )
    except ImportError:
        lines.append("- Numba: not installed")
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        lines.append(
            f"- NumPy BLAS: {blas.get('name')} {blas.get('version', '')} "
            f"({blas.get('openblas configuration', '').strip()}); "
            f"kernels in use: {_openblas_core()}"
        )
    except Exception:  # noqa: BLE001 - older NumPy: the printed form
        buf = io.StringIO()
        with redirect_stdout(buf):
            np.show_config()
        lines.append("- NumPy config: " + " ".join(buf.getvalue().split())[:300])
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            lines.append(
                f"- threadpool: {p.get('internal_api')} {p.get('version')} "
                f"threads={p.get('num_threads')} ({p.get('threading_layer', '')})"
            )
    except ImportError:
        lines.append(
            "- threadpoolctl: not installed (threads pinned by env vars below)"
        )
    for mod in ("torch", "jax"):
        try:
            m = __import__(mod)
            lines.append(f"- {mod} {m.__version__}")
        except ImportError:
            lines.append(f"- {mod}: not installed")
    pinned = ", ".join(f"{k}={v}" for k, v in ENV.items())
    lines.append(f"- child env (set by run.py): {pinned}")
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("MALLOC_", "GOTO", "OMP_", "MKL_")) and k not in ENV
    }
    lines.append(
        f"- inherited: OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
        + (
            ", " + ", ".join(f"{k}={v}" for k, v in inherited.items())
            if inherited
            else ""
        )
    )
    return "\n".join(lines)


def _cpu():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_one(impl, workload, dtype, rounds, min_round):
    with (
        tempfile.TemporaryDirectory() as cache
    ):  # cold Numba cache: compile is measured
        env = {
            **os.environ,
            **ENV,
            "GRAPHGEN_CACHE_DIR": cache,
            "NUMBA_CACHE_DIR": cache,
        }
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                impl,
                workload,
                dtype,
                str(rounds),
                str(min_round),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
        )
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def pick_workload(parser, name):
    """A workload by its full name or its prefix, any case: ``W4`` is w4_deep_elementwise."""
    found = [w for w in WORKLOADS if w == name or w.startswith(name.lower() + "_")]
    if len(found) != 1:
        parser.error(
            f"unknown workload {name!r}; expected one of {', '.join(WORKLOADS)}"
        )
    return found[0]


def table(results, dtype, workloads, impls):
    head = "| workload | " + " | ".join(LABELS[i] for i in impls) + " |"
    lines = [
        f"### {dtype}",
        "",
        (
            "time per value_and_grad call (median), ratio to "
            "hand-written NumPy, and compile/JIT time (generation + "
            "import + first call)"
        ),
        "",
        head,
        "|" + "---|" * (len(impls) + 1),
    ]
    for w in workloads:
        base = results.get((w, dtype, "hand"), {}).get("median")
        cells = []
        for i in impls:
            r = results.get((w, dtype, i), {})
            if "median" not in r:
                cells.append(
                    "n/a" if "missing" in r else f"error: {r.get('error', '?')[:40]}"
                )
                continue
            ratio = r["median"] / base if base else float("nan")
            target = TARGETS.get((w, i))
            mark = ""
            if target is not None:
                mark = " ✓" if ratio <= target else f" ✗ (target ≤{target})"
            comp = f", compile {fmt_time(r['compile'])}" if r.get("compile") else ""
            cells.append(f"{fmt_time(r['median'])} ({ratio:.2f}×{mark}{comp})")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3 rounds of ~20 ms, W1/W2/W4, float64 only",
    )
    p.add_argument("--workloads", default=None, help="comma-separated subset")
    p.add_argument(
        "--impls", default=None, help="comma-separated subset of " + ",".join(IMPLS)
    )
    p.add_argument("--dtypes", default=None, help="float64,float32")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--output",
        default=None,
        help="markdown file (default: RESULTS.md, not written with --quick)",
    )
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        impl, w, dtype, rounds, min_round = args.child
        child(impl, w, dtype, int(rounds), float(min_round))
        return 0
    workloads = (
        [pick_workload(p, w) for w in args.workloads.split(",")]
        if args.workloads
        else ["w1_tiny", "w2_mlp_small", "w4_deep_elementwise"]
        if args.quick
        else WORKLOADS
    )
    impls = args.impls.split(",") if args.impls else IMPLS
    if "hand" not in impls:
        impls = ["hand"] + impls
    dtypes = (
        args.dtypes.split(",")
        if args.dtypes
        else (["float64"] if args.quick else ["float64", "float32"])
    )
    rounds = args.rounds or (3 if args.quick else 15)
    min_round = 0.02 if args.quick else 0.2
    env_text = environment_text()
    print(env_text, flush=True)
    results = {}
    for dtype in dtypes:
        for w in workloads:
            for i in impls:
                r = run_one(i, w, dtype, rounds, min_round)
                results[(w, dtype, i)] = r
                print(f"{dtype} {w:<20} {i:<6} {json.dumps(r)}", flush=True)
        print()
        print(table(results, dtype, workloads, impls), flush=True)
    out = args.output or (None if args.quick else str(HERE / "RESULTS.md"))
    if out:
        text = [
            "# Benchmark results",
            "",
            (
                f"`python benchmarks/run.py` on "
                f"{time.strftime('%Y-%m-%d %H:%M')}; {rounds} rounds of ≥{min_round}s each, "
                "median reported; each implementation in its own process."
            ),
            "",
            "## Environment",
            "",
            env_text,
            "",
        ]
        for dtype in dtypes:
            text += [table(results, dtype, workloads, impls), ""]
        Path(out).write_text(
            "\n".join(text) + "\n" + _hand_written(Path(out)), encoding="utf-8"
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
