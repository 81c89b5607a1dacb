"""Data-parallel gradients of a generated module on a Dask cluster (``graphgen[dask]``).

A batch too large for one machine is split into shards along its batch axis. Each shard
goes to a worker, which runs the generated module's ``value_and_grad`` on it; the client
gets back the loss and gradient of the whole batch::

    L = (1/N) Σ_examples ℓ = Σ_i (n_i/N)·L_i,     ∂L/∂θ = Σ_i (n_i/N)·∂L_i/∂θ

where shard ``i`` has ``n_i`` examples and mean loss ``L_i`` (the module's loss is a mean
over the batch). Each worker returns ``(n_i, n_i·L_i, n_i·∂L_i/∂θ)``; these are summed
by a fixed binary tree in shard order (shard 0 + shard 1, shard 2 + shard 3, ..., then
the pairs of those) and divided by ``N = Σ n_i`` at the end. The tree depends only on the
number of shards, never on which worker ran what or when, so the result has the same
bytes for any number of workers and any scheduling.

The workers need NumPy (and Numba for that backend) and Dask, not graphgen: the module's
source text (and its stored weights, when it has a ``.npz``) travel with the step, and the
worker-side functions of this file are shipped by value. A worker writes the source to
its own cache directory (``$GRAPHGEN_CACHE_DIR/dask``, default
``~/.cache/graphgen/dask``: no shared filesystem), executes it once into a fresh module
object and keeps it, per process, under a name made of the source's hash.

Faults: the parameters, the program and (when given as arrays) the shards are data in the
task graph, so a task whose worker dies is run again on another one (the scheduler allows
``distributed.scheduler.allowed-failures`` deaths per task, 3 by default) and a task that
raises is retried ``retries`` times. Parameters and optimizer state change on the client
only after the whole step's gradient has arrived: a failed step leaves them, and any
checkpoint written from them, as they were.

Examples
--------
::

    from dask.distributed import Client
    import graphgen, graphgen.distributed as gd

    module = graphgen.compile(graphgen.load("examples/mlp.yaml"))
    client = Client("tcp://scheduler:8786")      # or gd.connect("local:2")
    loss, grads = gd.value_and_grad(module, client, shards, params)
"""

from __future__ import annotations

import builtins
import hashlib
import math
import os
import sys
import tempfile
import types
import uuid
import weakref

import numpy as np

from .errors import GraphgenError

__all__ = [
    "SGD",
    "Adam",
    "batch_axis",
    "connect",
    "init_state",
    "program",
    "split",
    "submit",
    "train_step",
    "value_and_grad",
]

# the message for a missing dask[distributed]
_INSTALL = "graphgen.distributed needs Dask: pip install 'graphgen[dask]'"


def _distributed():
    """The ``distributed`` package, imported on first use."""
    try:
        import distributed
    except ImportError as e:
        raise GraphgenError(f"{_INSTALL} ({e})") from None
    return distributed


# ---------------------------------------------------------------- worker side
#
# These functions run on the workers. They use only the standard library and NumPy, and
# are rebound below into a namespace that no module of graphgen owns, so that pickle
# cannot find them by name and Dask ships them by value (cloudpickle): a worker without
# graphgen installed can run them.


def _worker_cache_dir():
    """Where a worker keeps the modules it was sent: its own disk, not a shared one."""
    root = os.environ.get("GRAPHGEN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphgen"
    )
    folder = os.path.join(root, "dask")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only home: the machine's temporary directory
        folder = os.path.join(tempfile.gettempdir(), "graphgen-dask")
        os.makedirs(folder, exist_ok=True)
    return folder


def _write_once(path, data):
    """Write ``data`` to ``path`` unless it is there: the name holds the data's hash,
    so an existing file has these bytes (written whole, through a rename)."""
    if os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _worker_module(prog):
    """The module of ``prog = (name, source, weights)`` in this worker process: executed
    once from its source, then taken from ``sys.modules`` by its hash-made name."""
    name, source, weights = prog
    module = sys.modules.get(name)
    if module is not None:
        return module
    folder = _worker_cache_dir()
    path = os.path.join(folder, name + ".py")
    # a file, not only a string: Numba's cache=True keys compiled kernels on the source
    # file, and a module with stored weights reads <its name>.npz beside itself
    _write_once(path, source.encode("utf-8"))
    if weights:
        _write_once(os.path.join(folder, name + ".npz"), weights)
    module = types.ModuleType(name)
    module.__file__ = path
    module.__dict__["__source__"] = source
    code = compile(source, path, "exec")
    sys.modules[name] = module  # the module's functions resolve globals through it
    try:
        exec(code, module.__dict__)  # noqa: S102 - the generated module we were sent
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _batch_size(inputs, shard):
    """The examples in ``shard``: the length of the batch axis, the first axis of the
    inputs whose first size is symbolic (``batch_axis`` checked they share it)."""
    for name, shape in inputs.items():
        if shape and isinstance(shape[0], str) and name in shard:
            return int(np.shape(shard[name])[0])
    return 0


def _shard_sums(prog, params, shard):
    """``(n, n·L, {name: n·∂L/∂θ})`` of one shard of ``n`` examples, whose mean loss is
    ``L``: the summands of the tree. An empty shard adds nothing (zeros)."""
    module = _worker_module(prog)
    n = _batch_size(module.INPUTS, shard)
    if n == 0:
        return 0, 0.0, {k: np.zeros_like(params[k]) for k in module.WRT}
    loss, grads = module.value_and_grad(**shard, **params)
    # n is an exact float (n < 2**53); n·g rounds once, like the division at the root
    return n, n * loss, {k: g * n for k, g in grads.items()}


def _add(a, b):
    """One node of the tree: the sums of two subtrees, ``a`` on the left."""
    return a[0] + b[0], a[1] + b[1], {k: a[2][k] + b[2][k] for k in a[2]}


def _hold(value):
    """A task whose result is its argument: data the scheduler can make again when the
    worker holding it dies (scattered data could not be)."""
    return value


_WORKER = {"__name__": "graphgen_dask_worker", "__builtins__": builtins}
_WORKER.update(np=np, os=os, sys=sys, tempfile=tempfile, types=types)
for _f in (_worker_cache_dir, _write_once, _worker_module, _batch_size):
    _WORKER[_f.__name__] = types.FunctionType(_f.__code__, _WORKER, _f.__name__)
_SHARD_SUMS, _ADD, _HOLD = (
    types.FunctionType(f.__code__, _WORKER, f.__name__)
    for f in (_shard_sums, _add, _hold)
)
del _f


# ---------------------------------------------------------------- client side


def program(module):
    """``(name, source, weights)``: what a worker needs to run ``module``.

    ``module`` is what :func:`graphgen.compile` returns or a module imported from a file
    ``graphgen compile -o`` wrote. ``weights`` are the bytes of its ``.npz`` (``b""``
    when it has none); ``name`` is made of the hash of both, so a worker runs each
    program once.
    """
    source = getattr(module, "__source__", None)
    where = getattr(module, "__file__", None)
    if source is None and where and where.endswith(".py") and os.path.exists(where):
        with open(where, encoding="utf-8") as f:
            source = f.read()
    if not isinstance(source, str) or not hasattr(module, "value_and_grad"):
        raise GraphgenError(
            f"{getattr(module, '__name__', module)!r}: expected a module generated by "
            "graphgen with a loss (graphgen.compile(...) or a file from graphgen "
            "compile -o), with value_and_grad"
        )
    weights = b""
    stored = getattr(module, "_WEIGHTS_FILE", None)
    if stored:
        if not os.path.exists(stored):
            raise GraphgenError(
                f"{stored}: the module's stored weights are missing (expected the .npz "
                "graphgen wrote beside the module)"
            )
        with open(stored, "rb") as f:
            weights = f.read()
    h = hashlib.sha256(source.encode("utf-8"))
    h.update(b"\0weights\0")
    h.update(weights)
    return f"graphgen_dask_{h.hexdigest()[:24]}", source, weights


def batch_axis(module):
    """The module's inputs, after checking that they can be split into shards: one
    symbolic batch size first in every input that has one, and gradients of params
    only (an input's gradient has the shard's shape and cannot be summed)."""
    firsts = {
        shape[0]
        for shape in module.INPUTS.values()
        if shape and isinstance(shape[0], str)
    }
    if len(firsts) != 1:
        raise GraphgenError(
            f"{module.__name__}: to split a batch into shards the inputs need one "
            f"symbolic batch size as their first dimension, got inputs {module.INPUTS}"
        )
    inputs = [k for k in module.WRT if k in module.INPUTS]
    if inputs:
        raise GraphgenError(
            f"{module.__name__}: the gradient of input {inputs[0]!r} is per example and "
            "cannot be summed over shards; graphgen.distributed needs wrt to name params "
            "only"
        )
    return firsts.pop()


def _check_shard(module, batch, i, shard):
    """Names and batch axis of a shard given as arrays (the module checks the rest)."""
    if not isinstance(shard, dict):
        raise GraphgenError(
            f"shard {i}: expected a dict of input arrays or a Dask future of one, got "
            f"{type(shard).__name__}"
        )
    want = list(module.INPUTS)
    if sorted(shard) != sorted(want):
        missing = [k for k in want if k not in shard]
        extra = [k for k in shard if k not in module.INPUTS]
        raise GraphgenError(
            f"shard {i}: expected the arrays {want}, missing {missing}, unexpected {extra}"
        )
    sizes = {
        k: np.shape(v)[0] if np.ndim(v) else None
        for k, v in shard.items()
        if module.INPUTS[k] and module.INPUTS[k][0] == batch
    }
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise GraphgenError(
            f"shard {i}: the arrays {sorted(sizes)} must have the same length along "
            f"the batch axis {batch!r}, got {sizes}"
        )


def _check_params(module, params):
    if not isinstance(params, dict) or sorted(params) != sorted(module.PARAMS):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise GraphgenError(
            f"params: expected a dict of the arrays {list(module.PARAMS)}, got {got}"
        )


# programs already sent, per client: {client: {name: future}}; the future keeps the
# program's source in the cluster for the next steps
_SENT = weakref.WeakKeyDictionary()


def _program_future(client, prog):
    sent = _SENT.setdefault(client, {})
    if prog[0] not in sent:
        sent[prog[0]] = client.submit(_HOLD, prog, key=f"{prog[0]}-program", pure=False)
    return sent[prog[0]]


def submit(module, client, shards, params, *, retries=2, workers=None):
    """Submit one step's gradient; return the future of its ``(n, n·L, n·grads)`` root.

    Most callers want :func:`value_and_grad`, which waits for it.
    """
    distributed = _distributed()
    prog = program(module)  # first: is it a module graphgen made?
    batch = batch_axis(module)
    _check_params(module, params)
    shards = list(shards)
    if not shards:
        raise GraphgenError("expected at least one shard, got none")
    for i, shard in enumerate(shards):
        if not isinstance(shard, distributed.Future):
            _check_shard(module, batch, i, shard)
    prog = _program_future(client, prog)
    step = uuid.uuid4().hex[:12]
    where = {"retries": retries, "workers": workers, "pure": False}
    # arrays inside the graph, not scattered: the scheduler can run _hold again when
    # the worker holding them dies (a large graph is what this is; no warning for it)
    import dask

    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1 TiB"}):
        held = client.submit(_HOLD, params, key=f"graphgen-params-{step}", **where)
        level = [
            client.submit(
                _SHARD_SUMS,
                prog,
                held,
                shard,
                key=f"graphgen-shard-{step}-{i}",
                **where,
            )
            for i, shard in enumerate(shards)
        ]
    depth = 0
    while len(level) > 1:  # the fixed tree: neighbours in shard order, level by level
        depth += 1
        pairs = [
            client.submit(
                _ADD,
                level[j],
                level[j + 1],
                key=f"graphgen-sum-{step}-{depth}-{j // 2}",
                **where,
            )
            for j in range(0, len(level) - 1, 2)
        ]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def _finish(root):
    """``(loss, grads)`` of the whole batch from the root's sums."""
    n, loss, grads = root
    scale = float(n) or math.nan  # as the module: no examples, no mean
    return loss / scale, {k: g / scale for k, g in grads.items()}


def value_and_grad(module, client, shards, params, *, retries=2, workers=None):
    """The loss and gradients of the batch made of ``shards``, computed on ``client``'s
    cluster: the same as ``module.value_and_grad(**whole_batch, **params)`` up to
    rounding, and the same bytes for any number of workers.

    Parameters
    ----------
    module : module
        A generated module with a loss (:func:`graphgen.compile`, or imported from a
        file written by ``graphgen compile -o``).
    client : distributed.Client
    shards : list
        The batch, in order, each shard a dict ``{input name: array}`` (see
        :func:`split`) or a Dask future of one (data already on the cluster; make it
        with ``client.submit`` from a loader, so that it can be made again when its
        worker dies, not with ``client.scatter``).
    params : dict
        ``{param name: array}``, sent once per step.
    retries : int
        How many times a shard's task that raises is run again.
    workers : list, optional
        Worker addresses to run on (default: any).

    Returns
    -------
    (float, dict)
        As the module's ``value_and_grad``: the mean loss and ``{name: gradient}``.
    """
    root = submit(module, client, shards, params, retries=retries, workers=workers)
    try:
        sums = root.result()
    except GraphgenError:
        raise
    except ValueError as e:  # the module's argument checks, on a worker
        raise GraphgenError(f"a shard was refused by the module: {e}") from None
    finally:
        root.release()
    return _finish(sums)


def split(arrays, n, inputs=None):
    """``arrays`` (the whole batch) as ``n`` shards of consecutive examples, sizes as
    equal as can be (the first ones one larger).

    ``inputs`` (a module's ``INPUTS``) says which arrays have the batch axis; default:
    all of them.

    >>> import numpy as np
    >>> [s["x"].shape[0] for s in split({"x": np.zeros((10, 2))}, 3)]
    [4, 3, 3]
    """
    names = [k for k in arrays if inputs is None or k in inputs]
    sizes = {np.shape(arrays[k])[0] for k in names}
    if len(sizes) != 1:
        raise GraphgenError(f"split: the arrays' first dimensions differ: {sizes}")
    total = sizes.pop()
    bounds = [(total // n) * i + min(i, total % n) for i in range(n + 1)]
    return [{k: arrays[k][bounds[i] : bounds[i + 1]] for k in names} for i in range(n)]


# ---------------------------------------------------------------- optimizer step


class SGD:
    """``torch.optim.SGD``: with ``weight_decay`` λ, ``g ← g + λθ``; with momentum μ,
    ``b ← μb + (1 − dampening)g`` (``b ← g`` on the first step), ``g ← b`` (or
    ``g + μb``, Nesterov); then ``θ ← θ − lr·g``."""

    def __init__(
        self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False
    ):
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def init(self, params):
        return {"step": 0, "momentum": {}}

    def update(self, params, state, grads):
        state["step"] += 1
        for k, g in grads.items():
            p = params[k]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = state["momentum"].get(k)
                if buf is None:
                    buf = state["momentum"][k] = g.copy()
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class Adam:
    """``torch.optim.Adam`` (``decoupled=True``: ``AdamW``). At step t, with
    ``weight_decay`` λ: Adam ``g ← g + λθ``, AdamW ``θ ← θ(1 − lr·λ)``; then
    ``m ← m + (1 − β₁)(g − m)``, ``v ← β₂v + (1 − β₂)g²``,
    ``θ ← θ − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)``."""

    def __init__(
        self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False
    ):
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.decoupled = weight_decay, decoupled

    def init(self, params):
        return {
            "step": 0,
            "m": {k: np.zeros_like(p) for k, p in params.items()},
            "v": {k: np.zeros_like(p) for k, p in params.items()},
        }

    def update(self, params, state, grads):
        b1, b2 = self.betas
        state["step"] += 1
        t = state["step"]
        step_size = self.lr / (1.0 - b1**t)
        bias2_sqrt = math.sqrt(1.0 - b2**t)
        for k, g in grads.items():
            p, m, v = params[k], state["m"][k], state["v"][k]
            if self.weight_decay and self.decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p
            m += (1.0 - b1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - β₁)
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= step_size * (m / (np.sqrt(v) / bias2_sqrt + self.eps))


def init_state(params, optimizer):
    """The optimizer's state for ``params``: a dict (step counter and buffers)."""
    return optimizer.init(params)


def train_step(
    module, client, shards, params, state, optimizer, *, retries=2, workers=None
):
    """One optimizer step on the batch made of ``shards``: the gradient on the cluster
    (:func:`value_and_grad`), then ``optimizer`` (:class:`SGD`, :class:`Adam`) updates
    ``params`` and ``state`` in place on the client. Returns the loss (before the
    update). When the gradient fails, nothing was changed."""
    loss, grads = value_and_grad(
        module, client, shards, params, retries=retries, workers=workers
    )
    optimizer.update(params, state, grads)
    return loss


# ---------------------------------------------------------------- connecting


def connect(address):
    """A ``distributed.Client`` for ``--dask ADDRESS``: ``local:N`` starts a LocalCluster
    of N worker processes with one thread each (closed with the client), anything else
    is a scheduler's address (``tcp://host:8786``). Use it as a context manager."""
    distributed = _distributed()
    if address.startswith("local:"):
        count = address.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise GraphgenError(
                f"--dask {address}: expected local:N with N ≥ 1 worker processes"
            )
        cluster = distributed.LocalCluster(
            n_workers=int(count),
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
        )
        client = distributed.Client(cluster)
        return _Owned(client, cluster)
    try:
        client = distributed.Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise GraphgenError(
            f"--dask {address}: cannot reach the scheduler ({e})"
        ) from None
    return _Owned(client, None)


class _Owned:
    """A client, and the local cluster it started: ``with connect(...) as client``."""

    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
