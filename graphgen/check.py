"""Gradient checking against central finite differences, and random test data.

The data respects each array's domain: an array feeding ``log`` or ``sqrt`` is positive,
labels are valid class indices, targets of ``sigmoid_cross_entropy`` lie in (0, 1), arrays
feeding kinks (``relu``, ``abs``) stay away from 0. Symbolic sizes get small fixed values.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import dims, ops
from . import graph as g
from .api import compile as compile_module
from .errors import GradientError
from .passes.shapes import prepare


def symbol_sizes(G, sizes=None):
    """A concrete size for every symbolic dimension of ``G`` (2, 3, 4, 2, ... by name)."""
    syms = sorted(
        {s for n in G for d in G.nodes[n].get(g.SHAPE, ()) for s in dims.symbols(d)}
    )
    out = {s: 2 + i % 3 for i, s in enumerate(syms)}
    out.update(sizes or {})
    return out


def _domain(G, n):
    """Where the data of input/param ``n`` should be sampled, judged by its consumers."""
    found = []
    for s in G.successors(n):
        a = G.nodes[s]
        if a.get(g.KIND) != g.OPNODE:
            continue
        op = ops.get(a[g.OP])
        for i in G.edges[n, s][g.POS]:
            d = op.arg_domain(i)
            if op.indices is not None:  # class labels or indices: below the size of
                # the axis they index (a gather's data axis, not its last one)
                shapes = [G.nodes[p][g.SHAPE] for p in g.operands(G, s)]
                arg, size, _ = op.indices(shapes, a[g.ATTRS])
                if arg == i:
                    return ("labels", size)
            found.append(d)
    for d in ("positive", "unit", "away0"):
        if d in found:
            return (d, None)
    return ("real", None)


def random_arrays(G, seed=0, sizes=None, dtype=None):
    """Random arrays for every input and param of ``G``, keyed by name.

    Params with ``init: weights`` (an imported model's) get their stored values instead:
    a model's gradients are checked where the model is.

    Parameters
    ----------
    G : networkx.DiGraph
    seed : int
    sizes : dict, optional
        Values for symbolic dimensions (defaults from :func:`symbol_sizes`).
    dtype : str, optional
        Float dtype (default: the graph's).
    """
    G = prepare(G)
    sizes = symbol_sizes(G, sizes)
    rng = np.random.default_rng(seed)
    fdtype = dtype or G.graph["dtype"]
    out = {}
    for n in g.schedule(G):
        a = G.nodes[n]
        if a[g.KIND] not in (g.INPUT, g.PARAM):
            continue
        shape = dims.concrete(a[g.SHAPE], sizes)
        if a[g.KIND] == g.PARAM and a.get(g.INIT) == "weights":
            out[n] = np.asarray(G.graph["weights"][n], dtype=fdtype)
            continue
        domain, extra = _domain(G, n)
        if a[g.DTYPE] == "int64":
            if extra is None or extra == ():
                high = 2
            elif isinstance(extra, tuple):  # index tuples: below every axis they index
                high = min(dims.concrete(extra, sizes))
            else:
                high = dims.concrete((extra,), sizes)[0]
            out[n] = rng.integers(0, high, size=shape).astype(np.int64)
            continue
        out[n] = np.asarray(sample(rng, domain, shape), dtype=fdtype)
    return out


def sample(rng, domain, shape):
    """Random float64 values for an op argument's domain (see ``Op.domain``)."""
    if domain == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if domain == "unit":
        return rng.uniform(0.05, 0.95, shape)
    if domain == "mask":  # a 0/1 mask, both values present where there is room
        return (rng.permutation(np.arange(int(np.prod(shape))) % 2) == 1).reshape(
            shape
        ) * 1.0
    if domain == "away0":  # away from the kinks of relu, abs, ... at 0
        return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return rng.standard_normal(shape)


@dataclasses.dataclass
class Row:
    name: str
    shape: tuple
    checked: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclasses.dataclass
class CheckReport:
    """What :func:`check` found: one row per ``wrt`` array."""

    rows: list
    loss: float
    tol: float

    @property
    def ok(self):
        return all(r.ok for r in self.rows)

    def format(self):
        head = (
            f"{'array':<16} {'shape':<14} {'checked':>7} {'max abs err':>12} "
            f"{'max rel err':>12}  result"
        )
        lines = [f"loss = {self.loss!r}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name[:16]:<16} {str(r.shape)[:14]:<14} {r.checked:>7} "
                f"{r.max_abs:>12.3e} {r.max_rel:>12.3e}  {'ok' if r.ok else 'FAIL'}"
            )
        verdict = "all gradients match" if self.ok else "gradient check FAILED"
        lines.append(
            f"{verdict} (central differences, float64, tolerance {self.tol:g})"
        )
        return "\n".join(lines)


def check(G, seed=0, tol=1e-6, eps=1e-6, max_elements=64, arrays=None, module=None):
    """Compare ``value_and_grad`` with central finite differences in float64.

    Each ``wrt`` array has up to ``max_elements`` entries perturbed (all of them when it
    is that small, otherwise a random sample). An entry passes when
    ``|analytic − numeric| <= tol · max(1, |analytic|, |numeric|)``.

    Returns
    -------
    CheckReport
        ``report.ok`` is the verdict, ``report.format()`` the table.

    Examples
    --------
    >>> import graphgen
    >>> graphgen.check(graphgen.load("examples/tiny.yaml")).ok
    True
    """
    G = prepare(G)
    if G.graph.get("loss") is None:
        raise GradientError(
            "no loss to check: set 'loss' in the spec", source=g.source_of(G)
        )
    mod = module or compile_module(G, dtype="float64")
    if arrays is None:
        arrays = random_arrays(G, seed=seed, dtype="float64")
    arrays = {k: np.array(v) for k, v in arrays.items()}
    cotangents = {
        o: arrays.pop(c) for o, c in (G.graph.get("cotangents") or {}).items()
    }
    if cotangents:  # a vjp module: the loss is Σ_k <cotangent_k, output_k>
        grads = mod.vjp(cotangents, **arrays)

        def f(**kw):
            out = mod.forward(**kw)
            return float(sum(np.sum(out[o] * c) for o, c in cotangents.items()))

    else:
        _, grads = mod.value_and_grad(**arrays)

        def f(**kw):
            return mod.value_and_grad(**kw)[0]

    rng = np.random.default_rng(seed + 1)

    rows = []
    for w in G.graph["wrt"]:
        x = arrays[w]
        size = x.size
        idx = (
            np.arange(size)
            if size <= max_elements
            else np.sort(rng.choice(size, max_elements, replace=False))
        )
        max_abs = max_rel = 0.0
        for i in idx:
            flat = x.reshape(-1)
            old = flat[i]
            flat[i] = old + eps
            up = f(**arrays)
            flat[i] = old - eps
            down = f(**arrays)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            analytic = float(np.asarray(grads[w]).reshape(-1)[i])
            err = abs(analytic - numeric)
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(1.0, abs(analytic), abs(numeric)))
        rows.append(Row(w, tuple(x.shape), len(idx), max_abs, max_rel, max_rel <= tol))
    return CheckReport(rows, f(**arrays), tol)


@dataclasses.dataclass
class SecondOrderReport:
    """What :func:`check_second_order` found: one row per output (its JVP) and one per
    ``wrt`` array (its Hessian-vector product)."""

    jvp_rows: list
    hvp_rows: list
    loss: float | None
    tol: float

    @property
    def ok(self):
        return all(r.ok for r in self.jvp_rows + self.hvp_rows)

    def format(self):
        head = (
            f"{'array':<16} {'shape':<14} {'checked':>7} {'max abs err':>12} "
            f"{'max rel err':>12}  result"
        )
        lines = [] if self.loss is None else [f"loss = {self.loss!r}"]
        for title, rows in (
            (
                "JVPs (tangent of each output) vs central differences of forward",
                self.jvp_rows,
            ),
            (
                "HVPs (forward over reverse) vs central differences of the gradient",
                self.hvp_rows,
            ),
        ):
            if not rows:
                continue
            lines += [title, head, "-" * len(head)]
            for r in rows:
                lines.append(
                    f"{r.name[:16]:<16} {str(r.shape)[:14]:<14} {r.checked:>7} "
                    f"{r.max_abs:>12.3e} {r.max_rel:>12.3e}  {'ok' if r.ok else 'FAIL'}"
                )
        what = "JVPs and HVPs" if self.hvp_rows else "JVPs"
        verdict = f"all {what} match" if self.ok else "second-order check FAILED"
        lines.append(
            f"{verdict} (central differences along random directions, float64, "
            f"tolerance {self.tol:g})"
        )
        return "\n".join(lines)


def check_second_order(G, seed=0, tol=1e-6, eps=1e-6, max_elements=64, arrays=None):
    """Compare the generated ``jvp`` and ``hvp`` with central finite differences.

    With random directions ``v`` (one per input and param for ``jvp``, one per ``wrt``
    array for ``hvp``): each output's tangent against ``(f(θ + εv) − f(θ − εv)) / 2ε``
    of ``forward``, and each ``hvp`` array against the same difference of the gradient
    (``value_and_grad``), in float64. Up to ``max_elements`` entries of each array are
    compared (a random sample of larger ones); an entry passes when
    ``|analytic − numeric| <= tol · max(1, |analytic|, |numeric|)``. A model without a
    loss (or a ``vjp`` module) has its JVPs checked only.

    Examples
    --------
    >>> import graphgen
    >>> from graphgen.check import check_second_order
    >>> check_second_order(graphgen.load("examples/tiny.yaml")).ok
    True
    """
    G = prepare(G)
    second = G.graph.get("loss") is not None and not G.graph.get("cotangents")
    mod = compile_module(G, dtype="float64", jvp=True, hvp=second)
    if arrays is None:
        arrays = random_arrays(G, seed=seed, dtype="float64")
    arrays = {k: np.array(v) for k, v in arrays.items()}
    for c in (G.graph.get("cotangents") or {}).values():
        arrays.pop(c, None)
    rng = np.random.default_rng(seed + 1)

    def moved(direction, step):
        return {
            k: v + step * direction[k] if k in direction else v
            for k, v in arrays.items()
        }

    def rows_for(names, analytic, up, down, shapes):
        rows = []
        for name in names:
            a = np.asarray(analytic[name], dtype=np.float64).reshape(-1)
            numeric = (
                np.asarray(up[name], dtype=np.float64)
                - np.asarray(down[name], dtype=np.float64)
            ).reshape(-1) / (2 * eps)
            idx = (
                np.arange(a.size)
                if a.size <= max_elements
                else np.sort(rng.choice(a.size, max_elements, replace=False))
            )
            err = np.abs(a[idx] - numeric[idx])
            scale = np.maximum(1.0, np.maximum(np.abs(a[idx]), np.abs(numeric[idx])))
            max_abs = float(err.max()) if err.size else 0.0
            max_rel = float((err / scale).max()) if err.size else 0.0
            rows.append(
                Row(name, shapes[name], len(idx), max_abs, max_rel, max_rel <= tol)
            )
        return rows

    tangents = {
        n: rng.standard_normal(np.shape(arrays[n])) for n in mod.TANGENTS if n in arrays
    }
    _, dots = mod.jvp(tangents, **arrays)
    up, down = mod.forward(**moved(tangents, eps)), mod.forward(**moved(tangents, -eps))
    jvp_rows = rows_for(
        list(dots), dots, up, down, {o: tuple(np.shape(dots[o])) for o in dots}
    )
    hvp_rows, loss = [], None
    if second:
        vectors = {w: rng.standard_normal(np.shape(arrays[w])) for w in mod.WRT}
        loss, _, hvps = mod.hvp(vectors, **arrays)
        up = mod.value_and_grad(**moved(vectors, eps))[1]
        down = mod.value_and_grad(**moved(vectors, -eps))[1]
        hvp_rows = rows_for(
            list(mod.WRT), hvps, up, down, {w: tuple(arrays[w].shape) for w in mod.WRT}
        )
    return SecondOrderReport(jvp_rows, hvp_rows, loss, tol)
