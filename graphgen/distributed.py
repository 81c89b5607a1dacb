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
    "Optimizer",
    "batch_axis",
    "connect",
    "init_state",
    "program",
    "split",
    "step_function",
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
    # n is an exact float (n < 2**53); n·g rounds once, like the division at the root.
    # The gradients are fresh arrays (the module's promise): scaled where they are.
    return n, n * loss, {k: _scaled(g, n) for k, g in grads.items()}


def _scaled(g, n):
    """``n·g``, in place when ``g`` is an array of its own."""
    if isinstance(g, np.ndarray) and g.base is None and g.flags.writeable:
        return np.multiply(g, n, out=g)
    return g * n


def _add(a, b):
    """One node of the tree: the sums of two subtrees, ``a`` on the left."""
    return a[0] + b[0], a[1] + b[1], {k: a[2][k] + b[2][k] for k in a[2]}


def _hold(value):
    """A task whose result is its argument: data the scheduler can make again when the
    worker holding it dies (scattered data could not be)."""
    return value


_WORKER = {"__name__": "graphgen_dask_worker", "__builtins__": builtins}
_WORKER.update(np=np, os=os, sys=sys, tempfile=tempfile, types=types)
for _f in (_worker_cache_dir, _write_once, _worker_module, _batch_size, _scaled):
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
    """The name of the module's batch size (``"batch"``), after checking that its
    inputs can be split into shards: one symbolic size first in every input that has
    one, and gradients of params only (an input's gradient has the shard's shape and
    cannot be summed)."""
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
    ranks = sorted(client.nthreads()) if workers is None else []

    def place(i):
        """Shards i, i + 1, ... in blocks, one block per worker, so that the tree's
        first sums find both halves on one worker: a preference, not a rule (a task
        whose worker died runs elsewhere). Data already on the cluster stays put."""
        if not ranks or isinstance(shards[i], distributed.Future):
            return where
        hint = [ranks[i * len(ranks) // len(shards)]]
        return {**where, "workers": hint, "allow_other_workers": True}

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
                **place(i),
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
#
# The update on the client. It follows a module compiled with ``--optimizer`` (its
# OPTIMIZER table, its state layout ``{"step": 0-d int64, "<slot>.<param>": array}``, so
# the module's own init_state, save_checkpoint and load_checkpoint work with it), and
# torch.optim's formulas for a module compiled without one.

# optimizer -> the state it keeps per param (PyTorch's names, as in the module)
SLOTS = {
    "sgd": (),
    "momentum": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}
# the learning-rate schedules
CONSTANT, COSINE, WARMUP_COSINE = SCHEDULES = ("constant", "cosine", "warmup-cosine")
# PyTorch's defaults (as ``graphgen compile --optimizer`` takes them)
DEFAULTS = {
    "lr": 1e-3,
    "momentum": 0.0,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "clip_norm": None,
    "schedule": CONSTANT,
    "steps": None,
    "warmup": 0,
}
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: C / (‖g‖ + 1e-6)


class Optimizer:
    """``sgd``, ``momentum``, ``adam`` or ``adamw`` with torch.optim's formulas, at step
    t = 1, 2, ... with learning rate lr(t − 1) and gradient g of param p:

    - clip_norm C: every g ← g·min(1, C / (‖g‖ + 1e-6)), ‖g‖ the 2-norm of all of them
      together (``clip_grad_norm_``)
    - sgd: g ← g + λ·p (weight decay λ); p ← p − lr·g
    - momentum: g ← g + λ·p; b ← μ·b + g (b = 0 before step 1, μ = 0.9 by default);
      p ← p − lr·b
    - adam: g ← g + λ·p; adamw: p ← p·(1 − lr·λ) (λ = 0.01 by default); both then
      m ← m + (1 − β1)·(g − m), v ← β2·v + (1 − β2)·g²,
      p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
    - schedules of step k = t − 1 (N = steps, W = warmup): constant lr; cosine
      lr·(1 + cos(π·k/N))/2; warmup-cosine lr·(k + 1)/W for k < W, then
      lr·(1 + cos(π·(k − W)/(N − W)))/2

    >>> opt = Optimizer("adam", lr=0.01)
    >>> sorted(opt.init_state({"w": np.zeros(2)}))
    ['exp_avg.w', 'exp_avg_sq.w', 'step']
    """

    def __init__(self, name, **settings):
        if name not in SLOTS:
            raise GraphgenError(
                f"unknown optimizer {name!r} (known: {', '.join(SLOTS)})"
            )
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise GraphgenError(
                f"optimizer {name!r}: unknown settings {unknown} (known: "
                f"{', '.join(DEFAULTS)})"
            )
        given = {k: v for k, v in settings.items() if v is not None}
        s = {**DEFAULTS, **given}
        if name == "momentum" and "momentum" not in given:
            s["momentum"] = 0.9
        if name == "adamw" and "weight_decay" not in given:
            s["weight_decay"] = 1e-2
        if s["schedule"] not in SCHEDULES:
            raise GraphgenError(
                f"unknown schedule {s['schedule']!r} (known: {', '.join(SCHEDULES)})"
            )
        if s["schedule"] != CONSTANT and not (s["steps"] or 0) > s["warmup"]:
            raise GraphgenError(
                f"the {s['schedule']} schedule needs steps N > warmup W, got "
                f"steps={s['steps']!r}, warmup={s['warmup']!r}"
            )
        self.name, self.settings = name, s

    @classmethod
    def of(cls, module):
        """The optimizer a module was compiled with (its ``OPTIMIZER`` table)."""
        table = getattr(module, "OPTIMIZER", None)
        if not isinstance(table, dict):
            raise GraphgenError(
                f"{getattr(module, '__name__', module)!r} was compiled without an "
                "optimizer: compile it with --optimizer (optimizer=...) or pass "
                "optimizer=graphgen.distributed.Optimizer('adam', lr=...)"
            )
        table = dict(table)
        return cls(table.pop("name"), **{k: table[k] for k in DEFAULTS if k in table})

    def init_state(self, params):
        """Step 0 and zeros for every slot, in the module's layout."""
        state = {"step": np.zeros((), dtype=np.int64)}
        for slot in SLOTS[self.name]:
            for k, p in params.items():
                state[f"{slot}.{k}"] = np.zeros_like(p, order="C")
        return state

    def lr(self, k):
        """The learning rate of step k = 0, 1, ..."""
        s = self.settings
        if s["schedule"] == CONSTANT:
            return s["lr"]
        w, n = s["warmup"], s["steps"]
        if s["schedule"] == WARMUP_COSINE and k < w:
            return s["lr"] * (k + 1) / w
        w = w if s["schedule"] == WARMUP_COSINE else 0
        return s["lr"] * (1.0 + math.cos(math.pi * (k - w) / (n - w))) / 2.0

    def update(self, params, state, grads):
        """One step: ``params`` and ``state`` in place, from ``grads``."""
        s = self.settings
        missing = [k for k in params if k not in grads]
        keys = [f"{slot}.{k}" for slot in SLOTS[self.name] for k in params]
        if missing or any(k not in state for k in ["step", *keys]):
            raise GraphgenError(
                f"optimizer {self.name!r}: expected gradients of {list(params)} and a "
                f"state with {['step', *keys]} (init_state)"
            )
        k = int(state["step"])
        state["step"][...] = k + 1
        t, lr, lam = k + 1, self.lr(k), s["weight_decay"]
        clip = 1.0
        if s["clip_norm"] is not None:
            norms = [np.linalg.norm(np.ravel(grads[n])) for n in params]
            total = float(np.linalg.norm(np.array(norms, dtype=np.float64)))
            clip = min(1.0, s["clip_norm"] / (total + CLIP_EPS))
        for n, p in params.items():
            g = grads[n] if clip == 1.0 else grads[n] * clip
            if self.name == "adamw":
                if lam:
                    p *= 1.0 - lr * lam
            elif lam:
                g = g + lam * p
            if self.name == "sgd":
                p -= lr * g
            elif self.name == "momentum":
                b = state[f"momentum_buffer.{n}"]
                b *= s["momentum"]
                b += g
                p -= lr * b
            else:
                b1, b2 = s["betas"]
                m, v = state[f"exp_avg.{n}"], state[f"exp_avg_sq.{n}"]
                m += (1.0 - b1) * (g - m)
                v *= b2
                v += (1.0 - b2) * g * g
                step_size = lr / (1.0 - b1**t)
                p -= step_size * m / (np.sqrt(v) / math.sqrt(1.0 - b2**t) + s["eps"])


def init_state(params, optimizer):
    """The state of ``optimizer`` (an :class:`Optimizer`, or a module compiled with
    one) for ``params``."""
    if not isinstance(optimizer, Optimizer):
        optimizer = Optimizer.of(optimizer)
    return optimizer.init_state(params)


def train_step(
    module, client, shards, params, state, optimizer=None, *, retries=2, workers=None
):
    """One optimizer step on the batch made of ``shards``: the gradient on the cluster
    (:func:`value_and_grad`), then the update of ``params`` and ``state`` in place on
    the client, with ``optimizer`` (an :class:`Optimizer`; default: the one the module
    was compiled with, so that ``state`` is the module's own ``init_state(params)``).
    Returns the loss before the update. When the gradient fails, nothing is changed."""
    if optimizer is None:
        optimizer = Optimizer.of(module)
    loss, grads = value_and_grad(
        module, client, shards, params, retries=retries, workers=workers
    )
    optimizer.update(params, state, grads)
    return loss


def step_function(module, client, shards=8, optimizer=None, **options):
    """``train_step(params, state, **batch) -> loss`` with the module's signature, run on
    ``client``'s cluster: each batch is cut into ``min(shards, its size)`` shards (a
    number that does not depend on the cluster, so neither do the bytes of the result).
    A training loop written for ``module.train_step`` takes it unchanged; this is what
    ``graphgen train --dask`` swaps in. ``options`` go to :func:`train_step`.
    """
    if optimizer is None:
        optimizer = Optimizer.of(module)
    axis = batch_axis(module)

    def step(params, state, **batch):
        size = next(
            (len(batch[k]) for k, s in module.INPUTS.items() if s and s[0] == axis),
            0,
        )
        pieces = split(batch, max(1, min(shards, size)), module.INPUTS)
        return train_step(module, client, pieces, params, state, optimizer, **options)

    return step


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
