"""How long the learner page takes to make and to open in a browser.

    python benchmarks/page_bench.py            # tiny, fanout, the 50-layer spec, ResNet-50
    python benchmarks/page_bench.py --quick    # without ResNet-50

Not a test. For each model: the time ``graphgen render MODEL -o model.html`` spends
(wall, and CPU of graphgen and its dot runs: the numbers, the code, the check against
the generated module, the layouts), the page's size, and the time
headless Chromium (Debian's /usr/bin/chromium, driven over the DevTools protocol as the
browser tests do) takes from navigation until the page's script is ready, the median of
``--rounds`` loads, against the issue's target of 2 s. The machine line says what ran
it; on a shared machine the load average is printed too, since wall times scale with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGET = 2.0  # seconds to open, the bar for ResNet-50


def machine():
    import numpy as np

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                line.split(":", 1)[1].strip()
                for line in f
                if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    threads = ", ".join(
        f"{k}={os.environ[k]}"
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    )
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version', '')}"
    except Exception:  # noqa: BLE001 - older NumPy
        blas = "unknown"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {cpu}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, BLAS {blas}; "
        f"threads: {threads or 'library defaults'}; load average {load}"
    )


def _cpu():
    """CPU seconds of this process and of its finished children (the dot runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def models(quick):
    from page_specs import residual_spec

    import graphgen
    from graphgen.frontends.spec import from_dict

    out = [
        ("tiny", lambda: graphgen.load(REPO / "examples" / "tiny.yaml")),
        ("fanout", lambda: graphgen.load(REPO / "examples" / "fanout.yaml")),
        (
            "residual, 50 layers",
            lambda: from_dict(residual_spec(50), source="residual50.yaml"),
        ),
    ]
    if not quick:
        try:
            import onnx

            path = os.path.join(
                os.path.dirname(onnx.__file__),
                "backend/test/data/light/light_resnet50.onnx",
            )
            if os.path.exists(path):
                out.append(("ResNet-50 (ONNX)", lambda: graphgen.load(path)))
        except ImportError:
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="leave out ResNet-50")
    p.add_argument("--rounds", type=int, default=3, help="browser loads per page")
    args = p.parse_args()
    from browser import Browser

    import graphgen
    from graphgen.views import page

    print(machine())
    rows = []
    browser = Browser() if os.path.exists("/usr/bin/chromium") else None
    try:
        with tempfile.TemporaryDirectory() as d:
            for name, load in models(args.quick):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", graphgen.GraphgenWarning)
                    G = load()
                    w0, c0 = time.perf_counter(), _cpu()
                    out = os.path.join(d, "page.html")
                    page.write(G, out)
                    wall, cpu = time.perf_counter() - w0, _cpu() - c0
                size = os.path.getsize(out)
                opens = []
                if browser is not None:
                    opens = [browser.load(out) for _ in range(args.rounds)]
                    steps = browser.js(
                        "JSON.parse(document.getElementById('data').textContent)"
                        ".steps.length"
                    )
                    blocks = browser.js(
                        "Object.keys(JSON.parse(document.getElementById('data')"
                        ".textContent).blocks).length"
                    )
                else:
                    steps = blocks = "?"
                rows.append((name, len(G), steps, blocks, wall, cpu, size, opens))
    finally:
        if browser is not None:
            browser.close()
    head = (
        "| model | spec nodes | steps | blocks | make (wall) | make (CPU) | page size "
        "| open in Chromium (median) | ÷ 2 s target |"
    )
    print()
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, steps, blocks, wall, cpu, size, opens in rows:
        med = statistics.median(opens) if opens else float("nan")
        print(
            f"| {name} | {n} | {steps} | {blocks} | {wall:.1f} s | {cpu:.1f} s | "
            f"{size / 1e6:.2f} MB | {med:.2f} s | {med / TARGET:.2f} |"
        )


if __name__ == "__main__":
    main()
