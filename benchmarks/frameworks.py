"""The five workloads in PyTorch (eager autograd) and JAX (jit of value_and_grad), optional.

Both are only imported when installed; ``benchmarks/run.py`` reports them as absent
otherwise. The losses mirror the spec files in ``benchmarks/specs/``.
"""

from __future__ import annotations

import types


def loss_fn(workload, ns, a):
    """The workload's loss from arrays ``a`` (a dict) in the namespace ``ns``."""
    if workload == "w1_tiny":
        h1 = ns.sigmoid(a["x"] @ a["W1"] + a["b1"])
        y = ns.sigmoid(h1 @ a["W2"] + a["b2"])
        return ns.mean((y - a["t"]) ** 2)
    if workload in ("w2_mlp_small", "w3_mlp_large"):
        h = a["x"]
        k = 1
        while f"W{k + 1}" in a:
            h = ns.relu(h @ a[f"W{k}"] + a[f"b{k}"])
            k += 1
        logits = h @ a[f"W{k}"] + a[f"b{k}"]
        return ns.xent(logits, a["labels"])
    if workload == "w4_deep_elementwise":
        h = a["x"]
        i = 1
        while f"a{i}" in a:
            h = ns.tanh(h * a[f"a{i}"] + a[f"b{i}"])
            i += 1
        return ns.sum(h * h)
    if workload == "w5_fanout":
        h = ns.tanh(a["x"] @ a["W"])
        total = ns.sum(ns.sin(0.25 * h))
        for k in range(2, 17):
            total = total + ns.sum(ns.sin((k / 4) * h))
        return total
    raise KeyError(workload)


def torch_impl(workload, arrays, params, threads=1):
    """``f()`` running loss + autograd gradients in PyTorch eager mode."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    ns = types.SimpleNamespace(
        sigmoid=torch.sigmoid,
        relu=torch.relu,
        tanh=torch.tanh,
        sin=torch.sin,
        mean=torch.mean,
        sum=torch.sum,
        xent=F.cross_entropy,
    )
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for k in params:
        t[k].requires_grad_(True)
    ps = [t[k] for k in params]

    def f():
        loss = loss_fn(workload, ns, t)
        grads = torch.autograd.grad(loss, ps)
        return float(loss), {k: g.numpy() for k, g in zip(params, grads)}

    return f


def jax_namespace():
    """The functions :func:`loss_fn` calls, in JAX."""
    import jax
    import jax.numpy as jnp

    def xent(logits, labels):
        picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

    return types.SimpleNamespace(
        sigmoid=jax.nn.sigmoid,
        relu=jax.nn.relu,
        tanh=jnp.tanh,
        sin=jnp.sin,
        mean=jnp.mean,
        sum=jnp.sum,
        xent=xent,
    )


def jax_impl(workload, arrays, params, dtype):
    """``f()`` running ``jax.jit(jax.value_and_grad(loss))``."""
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    ns = jax_namespace()
    data = {k: jnp.asarray(v) for k, v in arrays.items() if k not in params}
    ps = {k: jnp.asarray(arrays[k]) for k in params}

    def loss(p, d):
        return loss_fn(workload, ns, {**d, **p})

    vg = jax.jit(jax.value_and_grad(loss))

    def f():
        value, grads = vg(ps, data)
        jax.block_until_ready(grads)
        return value, grads

    return f
