"""Newton-CG with a generated module's ``hvp`` (issue 17).

Two models (``examples/newton/``): an L2-regularized logistic regression (strictly
convex) and a small tanh network with weight decay. Each is compiled with ``hvp=True``;
Newton-CG solves ``H·p = −g`` by conjugate gradients using only Hessian-vector products
(forward over reverse: the JVP of the adjoint graph), never forming ``H``. It is compared
with

* gradient descent with a backtracking line search, run until it reaches Newton's loss
  (within ``1e-8``): Newton needs far fewer iterations;
* ``scipy.optimize.minimize(method="trust-ncg")`` given the same module's gradient and
  ``hvp``: the same minimum (loss and parameters within ``1e-8``; the tanh network's
  hidden units compared up to their order and sign, which do not change its loss).

Run ``python examples/newton.py`` (SciPy needed for the comparison).
"""

from __future__ import annotations

import pathlib

import numpy as np

import graphgen

HERE = pathlib.Path(__file__).resolve().parent / "newton"


class Flat:
    """The module's WRT arrays as one vector θ (WRT order, each flattened in C order,
    the ordering of ``hessian``), with the loss, gradient and ``H·v`` in that form."""

    def __init__(self, module, data, params):
        self.m, self.data = module, data
        self.shapes = [params[w].shape for w in module.WRT]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def pack(self, arrays):
        return np.concatenate([np.ravel(arrays[w]) for w in self.m.WRT])

    def unpack(self, theta):
        out, start = {}, 0
        for w, shape, size in zip(self.m.WRT, self.shapes, self.sizes):
            out[w] = np.ascontiguousarray(theta[start : start + size]).reshape(shape)
            start += size
        return out

    def loss(self, theta):
        return self.m.forward(**self.data, **self.unpack(theta))[self.m.LOSS]

    def value_and_grad(self, theta):
        loss, grads = self.m.value_and_grad(**self.data, **self.unpack(theta))
        return loss, self.pack(grads)

    def hvp(self, theta, v):
        _, _, hv = self.m.hvp(self.unpack(v), **self.data, **self.unpack(theta))
        return self.pack(hv)


def line_search(f, theta, loss, grad, step_dir, t=1.0):
    """Backtracking (Armijo): the first of t, t/2, ... that decreases the loss enough."""
    slope = float(grad @ step_dir)
    while t > 1e-20:
        new = theta + t * step_dir
        new_loss = f.loss(new)
        if new_loss <= loss + 1e-4 * t * slope:
            return new, t
        t *= 0.5
    return theta, 0.0


def conjugate_gradient(f, theta, grad, tol):
    """An approximate solution of H·p = −grad by CG with ``hvp`` only; stops at a
    direction of non-positive curvature (then the steepest descent so far)."""
    p = np.zeros_like(grad)
    r = -grad.copy()
    d = r.copy()
    rr = float(r @ r)
    for _ in range(10 * grad.size):
        hd = f.hvp(theta, d)
        curvature = float(d @ hd)
        if curvature <= 0:  # not convex here: take what CG has, or −grad
            return p if p.any() else -grad
        alpha = rr / curvature
        p += alpha * d
        r -= alpha * hd
        rr_new = float(r @ r)
        if np.sqrt(rr_new) <= tol:
            break
        d = r + (rr_new / rr) * d
        rr = rr_new
    return p


def newton_cg(f, theta, gtol=1e-12, max_iter=100):
    """Newton-CG with a line search; returns (θ, loss, iterations)."""
    for it in range(1, max_iter + 1):
        loss, grad = f.value_and_grad(theta)
        gnorm = float(np.linalg.norm(grad))
        if gnorm <= gtol:
            return theta, loss, it - 1
        # inexact Newton: solve more accurately near the minimum (superlinear)
        p = conjugate_gradient(f, theta, grad, tol=min(0.5, np.sqrt(gnorm)) * gnorm)
        theta, _ = line_search(f, theta, loss, grad, p)
    return theta, f.loss(theta), max_iter


def gradient_descent(f, theta, target, max_iter=100_000):
    """Steepest descent with a backtracking line search (the step grows back after each
    accepted one), until the loss is within 1e-8 of ``target``; returns (loss, its)."""
    t = 1.0
    for it in range(1, max_iter + 1):
        loss, grad = f.value_and_grad(theta)
        if loss <= target + 1e-8:
            return loss, it - 1
        theta, t = line_search(f, theta, loss, grad, -grad, t=min(2 * t, 1e3) or 1.0)
    return f.loss(theta), max_iter


def problem(name, seed=0):
    """The module of ``examples/newton/<name>.yaml`` and data for it."""
    G = graphgen.load(HERE / f"{name}.yaml")
    m = graphgen.compile(G, hvp=True)
    rng = np.random.default_rng(seed)
    n = 200
    d = m.INPUTS["X"][1]
    X = rng.standard_normal((n, d))
    if name == "logreg":
        X *= np.array([0.3, 1.0, 3.0, 10.0, 1.0])  # features on different scales
        w = rng.standard_normal((d, 1)) / np.array([[0.3], [1.0], [3.0], [10.0], [1.0]])
        t = (X @ w + 0.5 * rng.standard_normal((n, 1)) > 0).astype(np.float64)
    else:  # a smooth target the network can fit
        t = np.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]
    params = m.init_params(seed)
    params = {k: 0.5 * v if v.ndim > 1 else v for k, v in params.items()}
    return Flat(m, {"X": X, "t": t}, params), params


def canonical(f, theta):
    """θ of the tanh network with its hidden units in a canonical order: each unit's
    sign flipped so that its output weight is positive (tanh is odd), then sorted by it;
    the loss is the same, so two optimizers' minima compare entry by entry."""
    p = f.unpack(theta)
    if "W2" not in p:
        return theta
    sign = np.where(p["W2"][:, 0] < 0, -1.0, 1.0)
    order = np.argsort(sign * p["W2"][:, 0], kind="stable")
    p = {
        "W1": (p["W1"] * sign)[:, order],
        "b1": (p["b1"] * sign)[order],
        "W2": (p["W2"] * sign[:, None])[order],
        "b2": p["b2"],
    }
    return f.pack(p)


# the data seed of each model (for the tanh network, one where Newton-CG and trust-ncg
# from the same start reach the same minimum rather than two of its many)
SEEDS = {"logreg": 2, "mlp": 2}


def run(name, seed=None, with_scipy=True):
    """Newton-CG, gradient descent and (if SciPy is there) trust-ncg on one model."""
    f, params = problem(name, SEEDS[name] if seed is None else seed)
    theta0 = f.pack(params)
    theta, loss, newton_its = newton_cg(f, theta0.copy())
    gd_loss, gd_its = gradient_descent(f, theta0.copy(), loss)
    result = {
        "name": name,
        "size": theta0.size,
        "loss": loss,
        "grad_norm": float(np.linalg.norm(f.value_and_grad(theta)[1])),
        "newton_iterations": newton_its,
        "gd_iterations": gd_its,
        "gd_loss": gd_loss,
        "theta": theta,
    }
    if with_scipy:
        from scipy.optimize import minimize

        def fun(x):
            loss, grad = f.value_and_grad(x)
            return loss, grad

        res = minimize(
            fun,
            theta0.copy(),
            jac=True,
            hessp=f.hvp,
            method="trust-ncg",
            options={"gtol": 1e-12, "maxiter": 1000},
        )
        result["scipy_loss"] = float(res.fun)
        result["scipy_theta"] = res.x
        result["max_param_diff"] = float(
            np.max(np.abs(canonical(f, theta) - canonical(f, res.x)))
        )
        result["scipy_iterations"] = int(res.nit)
    return result


def main():
    try:
        import scipy  # noqa: F401

        with_scipy = True
    except ImportError:
        with_scipy = False
    for name in ("logreg", "mlp"):
        r = run(name, with_scipy=with_scipy)
        print(f"{name} ({r['size']} parameters)")
        print(
            f"  Newton-CG (generated hvp): loss {r['loss']:.12g} in "
            f"{r['newton_iterations']} iterations, |grad| {r['grad_norm']:.1e}"
        )
        print(
            f"  gradient descent:          loss {r['gd_loss']:.12g} in "
            f"{r['gd_iterations']} iterations"
        )
        if with_scipy:
            print(
                f"  scipy trust-ncg:           loss {r['scipy_loss']:.12g} in "
                f"{r['scipy_iterations']} iterations; max |Δθ| vs Newton-CG "
                f"{r['max_param_diff']:.1e}"
            )


if __name__ == "__main__":
    main()
