"""The README's first command: spec -> module -> gradient check -> training -> diagram.

Run with ``make demo`` (or ``python examples/demo.py`` inside the virtual environment).
Everything it writes goes to ``out/``.
"""

import importlib.util
import pathlib
import sys

import numpy as np

import graphgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "out"


def import_file(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    OUT.mkdir(exist_ok=True)
    spec_path = ROOT / "examples" / "tiny.yaml"

    # 1. compile the spec into a standalone module (needs only NumPy) and import it
    G = graphgen.load(spec_path)
    module_path = OUT / "tiny_net.py"
    module_path.write_text(graphgen.generate(G, source_name="tiny.yaml"))
    tiny_net = import_file(module_path)
    print(f"1. compiled {spec_path.name} -> {module_path.relative_to(ROOT)}")

    # 2. its gradients against central finite differences
    report = graphgen.check(G, seed=0)
    print("2. gradient check\n" + report.format())
    if not report.ok:
        return 1

    # 3. train it on XOR with plain gradient descent
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    t = np.array([[0], [1], [1], [0]], dtype=np.float64)
    params = tiny_net.init_params(seed=1)
    lr = 2.0
    first = None
    for step in range(6001):
        loss, grads = tiny_net.value_and_grad(x=x, t=t, **params)
        first = loss if first is None else first
        for name, grad in grads.items():
            params[name] = params[name] - lr * grad
        if step % 1500 == 0:
            print(f"   step {step:5d}  loss {loss:.5f}")
    y = tiny_net.forward(x=x, t=t, **params)["y"]
    print(
        "3. trained on XOR: predictions", np.round(y.ravel(), 3), "targets", t.ravel()
    )
    if not loss < first / 10:
        print("training did not reduce the loss ten-fold", file=sys.stderr)
        return 1

    # 4. the gradient-flow diagram and the chain rule for W1
    dot_path = OUT / "tiny_flow.dot"
    dot_path.write_text(graphgen.to_dot(G, view="flow"))
    try:
        svg_path = OUT / "tiny_flow.svg"
        graphgen.render(G, view="flow").render(outfile=str(svg_path), cleanup=True)
        print(f"4. rendered {svg_path.relative_to(ROOT)} (and {dot_path.name})")
    except graphgen.GraphgenError as e:
        print(f"4. wrote {dot_path.relative_to(ROOT)}; SVG skipped: {e}")
    print(graphgen.explain(G, "W1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
