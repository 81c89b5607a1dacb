"""The Numba backend's convolution, pooling and batch-norm helpers against the NumPy
backend's, layer by layer on ResNet-50's shapes, in one process (so a busy machine slows
both alike).

    python benchmarks/numba_cnn_bench.py                 # batch 8, float32, 2 threads
    python benchmarks/numba_cnn_bench.py --batch 2 --rounds 3 --layers 10
    python benchmarks/numba_cnn_bench.py --per-layer     # and each conv's three times

Each helper is rendered from its template (templates/numpy/helpers/ and the Numba
overrides in templates/numba/helpers/). The NumPy helpers get their inputs in the layout
the NumPy module gives them (convolution outputs channel-major); the Numba helpers get
C-contiguous arrays, as the Numba module's loop kernels write them. Prints per-op totals
(ms, the minimum over rounds, summed over the layers) and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "2")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np

HELPERS = [
    "out_size",
    "pad_spatial",
    "slab",
    "windows",
    "pool_pad",
    "pool_count",
    "pool_argmax",
    "im2col",
    "conv",
    "conv_grad_input",
    "conv_grad_weight",
    "max_pool",
    "max_pool_grad",
    "avg_pool",
    "avg_pool_grad",
    "channel_blocks",
    "channel_dot",
    "channel_affine",
    "batch_norm",
]


def helpers(backend, dtype):
    """The helper functions of one backend's module, as a namespace."""
    from graphgen.codegen.render import environment

    env = environment()
    parts = []
    for h in HELPERS:
        names = [f"{backend}/helpers/{h}.py.j2", f"numpy/helpers/{h}.py.j2"]
        parts.append(env.select_template(names).render(backend=backend))
    src = f"import numba\nimport numpy as np\n\nDTYPE = np.{np.dtype(dtype)}\n\n\n"
    src += "\n\n\n".join(parts)
    # a real file, so that cache=True has somewhere to write
    path = Path(tempfile.mkdtemp()) / f"cnn_helpers_{backend}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def resnet50_layers(batch):
    """(x shape, w shape, strides, pads) of every Conv of the light ResNet-50."""
    import onnx
    from onnx_bench import light

    model = onnx.shape_inference.infer_shapes(onnx.load(light("resnet50")))
    g = model.graph
    shapes = {}
    for v in (*g.input, *g.value_info, *g.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value for d in dims]
    for i in g.initializer:
        shapes[i.name] = list(i.dims)
    layers = []
    for node in g.node:
        if node.op_type != "Conv":
            continue
        at = {a.name: list(a.ints) for a in node.attribute}
        x, w = shapes[node.input[0]], shapes[node.input[1]]
        layers.append(
            (
                (batch, *x[1:]),
                tuple(w),
                tuple(at.get("strides", [1, 1])),
                tuple(at.get("pads", [0, 0, 0, 0])),
            )
        )
    return layers


def best(f, rounds):
    f()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="only the first N convs")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--per-layer", action="store_true", help="also print each conv's times (ms)"
    )
    args = ap.parse_args()
    dt = np.dtype(args.dtype)
    npy, nb = helpers("numpy", dt), helpers("numba", dt)
    rng = np.random.default_rng(0)
    totals = {}

    def add(op, a, b):
        ta, tb = totals.get(op, (0.0, 0.0))
        totals[op] = (ta + a, tb + b)
        if args.per_layer and op.startswith("conv"):
            print(
                f"  {op:17s} {xs} {ws} s{st} p{pd}: NumPy {a * 1e3:7.2f}  Numba {b * 1e3:7.2f}"
            )

    layers = resnet50_layers(args.batch)[: args.layers]
    for xs, ws, st, pd in layers:
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt) * 0.1
        geo = (st, pd, (1, 1), 1)
        # the NumPy module's layout: a conv output, channel-major
        xc = np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)
        y = nb["_conv"](x, w, *geo)
        g = rng.standard_normal(y.shape).astype(dt)
        gc = np.ascontiguousarray(g.swapaxes(0, 1)).swapaxes(0, 1)
        add(
            "conv",
            best(partial(npy["_conv"], xc, w, *geo), args.rounds),
            best(partial(nb["_conv"], x, w, *geo), args.rounds),
        )
        add(
            "conv_grad_input",
            best(partial(npy["_conv_grad_input"], gc, w, *geo, xs[2:]), args.rounds),
            best(partial(nb["_conv_grad_input"], g, w, *geo, xs[2:]), args.rounds),
        )
        add(
            "conv_grad_weight",
            best(partial(npy["_conv_grad_weight"], xc, gc, *geo, ws[2:]), args.rounds),
            best(partial(nb["_conv_grad_weight"], x, g, *geo, ws[2:]), args.rounds),
        )
        c = ws[0]
        scale, bias, mean = (rng.standard_normal(c).astype(dt) for _ in range(3))
        var = (rng.random(c) + 0.5).astype(dt)
        yc = np.ascontiguousarray(y.swapaxes(0, 1)).swapaxes(0, 1)
        add(
            "batch_norm",
            best(
                partial(npy["_batch_norm"], yc, scale, bias, mean, var, 1e-5),
                args.rounds,
            ),
            best(
                partial(nb["_batch_norm"], y, scale, bias, mean, var, 1e-5), args.rounds
            ),
        )
        add(
            "channel_dot",
            best(partial(npy["_channel_dot"], gc, yc, mean), args.rounds),
            best(partial(nb["_channel_dot"], g, y, mean), args.rounds),
        )
    x = rng.standard_normal((args.batch, 64, 112, 112)).astype(dt)
    pool = ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    y = nb["_max_pool"](x, *pool, 0)
    g = rng.standard_normal(y.shape).astype(dt)
    add(
        "max_pool",
        best(partial(npy["_max_pool"], x, *pool, 0), args.rounds),
        best(partial(nb["_max_pool"], x, *pool, 0), args.rounds),
    )
    add(
        "max_pool_grad",
        best(partial(npy["_max_pool_grad"], g, x, *pool), args.rounds),
        best(partial(nb["_max_pool_grad"], g, x, *pool), args.rounds),
    )
    print(f"batch {args.batch}, {dt}, {len(layers)} convs, min of {args.rounds} rounds")
    print("| helper | NumPy ms | Numba ms | ratio |")
    print("|---|---|---|---|")
    ta = tb = 0.0
    for op, (a, b) in totals.items():
        print(f"| {op} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f} |")
        ta, tb = ta + a, tb + b
    print(f"| total | {ta * 1e3:.1f} | {tb * 1e3:.1f} | {tb / ta:.2f} |")


if __name__ == "__main__":
    main()
