"""Render a generated 2,000-node graph with ``--collapse`` and print the time.

Not a test: run ``python benchmarks/render_bench.py [LAYERS]``. Each of the 105 layers
``layer{i}/...`` has a weight, a bias and four op nodes, plus per-layer constants.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from graphgen.views import diagram
from graphgen.frontends.spec import from_dict


def big_spec(layers=100, width=8):
    data = {
        "name": "big",
        "inputs": {"x": ["batch", width], "t": ["batch", width]},
        "params": {},
        "nodes": {},
    }
    prev = "x"
    for i in range(layers):
        p = f"layer{i}"
        data["params"][f"{p}/W"] = [width, width]
        data["params"][f"{p}/b"] = {"shape": [width], "init": "zeros"}
        data["params"][f"{p}/s"] = [width]
        nodes = {
            f"{p}/z": {"op": "matmul", "args": [prev, f"{p}/W"]},
            f"{p}/a": {"op": "add", "args": [f"{p}/z", f"{p}/b"]},
            f"{p}/h": {"op": "tanh", "args": [f"{p}/a"]},
            f"{p}/g": {"op": "mul", "args": [f"{p}/h", f"{p}/s"]},
            f"{p}/r": {"op": "add", "args": [f"{p}/g", prev]},
            f"{p}/sq": {"op": "square", "args": [f"{p}/r"]},
            f"{p}/pen": {"op": "mean", "args": [f"{p}/sq"]},
            f"{p}/out": {"op": "mul", "args": [f"{p}/r", 0.5]},
            f"{p}/res": {"op": "add", "args": [f"{p}/out", f"{p}/g"]},
            f"{p}/n": {"op": "neg", "args": [f"{p}/res"]},
            f"{p}/y": {"op": "sub", "args": [f"{p}/res", f"{p}/n"]},
            f"{p}/o": {"op": "mul", "args": [f"{p}/y", 0.25]},
            f"{p}/l": {"op": "mul", "args": [f"{p}/pen", 0.001]},
        }
        data["nodes"].update(nodes)
        prev = f"{p}/o"
    data["nodes"]["fit"] = {"op": "mse", "args": [prev, "t"]}
    pens = [f"layer{i}/l" for i in range(layers)]
    data["nodes"]["penalty"] = {"op": "add_n", "args": pens}
    data["nodes"]["J"] = {"op": "add", "args": ["fit", "penalty"]}
    data["loss"] = "J"
    return data


def main(layers=105):
    G = from_dict(big_spec(layers), source="<big>")
    print(f"graph: {G.number_of_nodes()} nodes, {G.number_of_edges()} edges")
    out = os.path.join(tempfile.mkdtemp(), "big.svg")
    for view in ("flow", "forward"):
        t0 = time.perf_counter()
        diagram.write(G, out, view=view, collapse=True)
        dt = time.perf_counter() - t0
        print(
            f"render --view {view} --collapse -> svg: {dt:.2f} s "
            f"({os.path.getsize(out) // 1024} KiB)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 105)
