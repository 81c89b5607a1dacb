"""graphgen.distributed on a real LocalCluster of worker processes: the gradient of a
batch split into shards is the same bytes for 1, 2 and 3 workers, matches one process,
survives a worker killed in the middle of a step, and the workers never import graphgen.

One cluster (3 worker processes, one thread each) serves the whole module; the test that
kills a worker runs last.
"""

from __future__ import annotations

import builtins
import inspect
import itertools
import os
import sys
import types

import numpy as np
import pytest
from conftest import EXAMPLES

import graphgen
from graphgen import GraphgenError
from graphgen import distributed as gd
from graphgen.check import random_arrays

distributed = pytest.importorskip("distributed")

# A worker plugin shipped by value (its module is no importable one). On every worker,
# also one started after a death, it makes `import graphgen` fail: the workers must run
# on the source text they are sent. Armed with a flag file, the first worker to start a
# shard's task removes the file, writes its pid beside it and dies on the spot.
PLUGIN = """
import os, sys
from distributed import WorkerPlugin

class Plugin(WorkerPlugin):
    name = "graphgen-test"

    def __init__(self, flag):
        self.flag = flag

    def setup(self, worker):
        for k in [k for k in sys.modules if k == "graphgen" or k.startswith("graphgen.")]:
            del sys.modules[k]
        sys.modules["graphgen"] = None  # import graphgen raises ImportError

    def transition(self, key, start, finish, **kwargs):
        name = key if isinstance(key, str) else str(key)
        if finish == "executing" and name.startswith("graphgen-shard-"):
            try:
                os.remove(self.flag)
            except FileNotFoundError:
                return
            with open(self.flag + ".pid", "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    flag = str(tmp_path_factory.mktemp("dask") / "kill-one")
    ns = {"__name__": "graphgen_test_dask_plugin", "__builtins__": builtins}
    exec(PLUGIN, ns)  # noqa: S102
    cluster = distributed.LocalCluster(
        n_workers=3, processes=True, threads_per_worker=1, dashboard_address=None
    )
    client = distributed.Client(cluster)
    client.register_plugin(ns["Plugin"](flag))
    yield types.SimpleNamespace(client=client, flag=flag)
    client.close()
    cluster.close()


def _workers(client):
    return sorted(client.scheduler_info()["workers"])


def _batch(G, module, n, seed=1):
    sizes = {"batch": n, "N": n}
    arrays = random_arrays(
        G, seed=seed, sizes=sizes, dtype=module.DTYPES[next(iter(module.PARAMS))]
    )
    batch = {k: arrays[k] for k in module.INPUTS}
    params = {k: arrays[k] for k in module.PARAMS}
    return batch, params


def _bytes(loss, grads):
    return np.float64(loss).tobytes(), {k: v.tobytes() for k, v in grads.items()}


def _assert_close(loss, grads, want_loss, want_grads, rtol=1e-12):
    assert abs(loss - want_loss) <= rtol * abs(want_loss)
    assert sorted(grads) == sorted(want_grads)
    for k, g in grads.items():
        w = want_grads[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        scale = max(1.0, float(np.max(np.abs(w))))
        assert float(np.max(np.abs(g - w))) <= rtol * scale, k


MLP = graphgen.load(EXAMPLES / "mlp.yaml")


def test_workers_run_without_graphgen(cluster):
    missing = cluster.client.run(lambda: sys.modules.get("graphgen", "there"))
    assert set(missing.values()) == {None}  # poisoned: import graphgen fails there
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 8)
    loss, _ = gd.value_and_grad(module, cluster.client, gd.split(batch, 2), params)
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "spec, n, shards",
    [("mlp.yaml", 37, 5), ("tiny.yaml", 11, 4), ("fanout.yaml", 9, 3)],
)
def test_same_bytes_for_1_2_3_workers_and_one_process(cluster, spec, n, shards):
    G = graphgen.load(EXAMPLES / spec)
    module = graphgen.compile(G)
    batch, params = _batch(G, module, n)
    want = module.value_and_grad(**batch, **params)
    ws = _workers(cluster.client)
    results = []
    for k in (1, 2, 3):
        got = gd.value_and_grad(
            module, cluster.client, gd.split(batch, shards), params, workers=ws[:k]
        )
        _assert_close(*got, *want)
        results.append(_bytes(*got))
    assert results[0] == results[1] == results[2]
    # one shard is the whole batch: n·L/n and n·g/n round back to the same bytes
    one = gd.value_and_grad(module, cluster.client, [batch], params)
    _assert_close(*one, *want, rtol=1e-15)


def test_unequal_and_empty_shards_weigh_by_size(cluster):
    """Shards of 1, 0, 6 and 2 examples: weighted by size, not averaged per shard."""
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 9)
    cuts = [0, 1, 1, 7, 9]
    shards = [
        {k: v[a:b] for k, v in batch.items()} for a, b in itertools.pairwise(cuts)
    ]
    got = gd.value_and_grad(module, cluster.client, shards, params)
    _assert_close(*got, *module.value_and_grad(**batch, **params))


def test_gradient_matches_central_differences(cluster):
    """The distributed gradient of the tiny net against central differences of the
    single-process loss of the whole batch (float64)."""
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    module = graphgen.compile(G)
    batch, params = _batch(G, module, 7)
    _, grads = gd.value_and_grad(module, cluster.client, gd.split(batch, 3), params)
    for name in params:
        p = {k: v.copy() for k, v in params.items()}
        x, fd = p[name].reshape(-1), np.zeros(p[name].size)
        for i in range(x.size):
            old = x[i]
            x[i] = old + 1e-6
            up = module.value_and_grad(**batch, **p)[0]
            x[i] = old - 1e-6
            down = module.value_and_grad(**batch, **p)[0]
            x[i] = old
            fd[i] = (up - down) / 2e-6
        np.testing.assert_allclose(grads[name].reshape(-1), fd, rtol=1e-6, atol=1e-9)


def test_stored_weights_travel_to_the_workers(cluster):
    """LeNet from ONNX with conv1's weight frozen: a constant the module reads from the
    .npz beside it, which the workers get as bytes."""
    pytest.importorskip("onnx")
    G = graphgen.load(
        EXAMPLES / "lenet.onnx",
        loss="softmax_cross_entropy",
        labels="labels",
        freeze=("conv1.weight",),
    )
    module = graphgen.compile(G, dtype="float64")
    assert module._WEIGHTS_FILE.endswith(".npz")
    batch, params = _batch(G, module, 5)
    want = module.value_and_grad(**batch, **params)
    got = gd.value_and_grad(module, cluster.client, gd.split(batch, 2), params)
    _assert_close(*got, *want)


def test_numba_module_on_a_worker(cluster):
    pytest.importorskip("numba")
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    module = graphgen.compile(G, backend="numba")
    batch, params = _batch(G, module, 10)
    want = module.value_and_grad(**batch, **params)
    one = _workers(cluster.client)[:1]  # one worker compiles (or loads) the kernels
    got = gd.value_and_grad(
        module, cluster.client, gd.split(batch, 3), params, workers=one
    )
    _assert_close(*got, *want)


def test_shards_as_futures_from_a_loader(cluster):
    """Data already on the cluster: futures of tasks that make the shards."""
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 12)
    pieces = gd.split(batch, 3)
    futures = [cluster.client.submit(dict, p, pure=False) for p in pieces]
    got = gd.value_and_grad(module, cluster.client, futures, params)
    assert _bytes(*got) == _bytes(
        *gd.value_and_grad(module, cluster.client, pieces, params)
    )


OPTIMIZERS = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.05, "weight_decay": 1e-3},
    "adam": {"lr": 1e-2, "weight_decay": 1e-3, "clip_norm": 0.5},
    "adamw": {"lr": 1e-2, "schedule": "cosine", "steps": 3},
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_train_step_matches_one_process(cluster, name):
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    module = graphgen.compile(G)
    batch, params = _batch(G, module, 10)
    local = {k: v.copy() for k, v in params.items()}
    opt = gd.Optimizer(name, **OPTIMIZERS[name])
    state_d, state_l = opt.init_state(params), opt.init_state(local)
    for _ in range(3):
        loss = gd.train_step(
            module, cluster.client, gd.split(batch, 3), params, state_d, opt
        )
        want, grads = module.value_and_grad(**batch, **local)
        opt.update(local, state_l, grads)
        assert abs(loss - want) <= 1e-12 * abs(want)
    for k in params:
        np.testing.assert_allclose(params[k], local[k], rtol=1e-12, atol=1e-14)
    assert int(state_d["step"]) == 3


def test_step_function_is_a_train_step(cluster):
    """The drop-in for module.train_step: the same loss and params as train_step on the
    batch cut into min(shards, batch) shards, a batch smaller than ``shards`` too."""
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    module = graphgen.compile(G)
    batch, params = _batch(G, module, 5)
    opt = gd.Optimizer("momentum", lr=0.1)
    mine = {k: v.copy() for k, v in params.items()}
    state, state_m = opt.init_state(params), opt.init_state(mine)
    step = gd.step_function(module, cluster.client, shards=8, optimizer=opt)
    for _ in range(2):
        loss = step(mine, state_m, **batch)
        want = gd.train_step(
            module, cluster.client, gd.split(batch, 5), params, state, opt
        )
        assert loss == want
    assert all(mine[k].tobytes() == params[k].tobytes() for k in params)


def _compile_with(G, name):
    """The module with a generated train_step, where graphgen has them (issue 18)."""
    if "optimizer" not in inspect.signature(graphgen.generate).parameters:
        pytest.skip("graphgen.compile(..., optimizer=) is not in this graphgen")
    return graphgen.compile(G, optimizer=name)


@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_train_step_follows_the_generated_one(cluster, name):
    """A module compiled with an optimizer: the distributed step takes its OPTIMIZER
    table and state layout, and follows its own train_step on the whole batch."""
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    module = _compile_with(G, name)
    batch, params = _batch(G, module, 12)
    local = {k: v.copy() for k, v in params.items()}
    state, state_l = module.init_state(params), module.init_state(local)
    for _ in range(4):
        loss = gd.train_step(module, cluster.client, gd.split(batch, 3), params, state)
        want = module.train_step(local, state_l, **batch)
        assert abs(loss - want) <= 1e-12 * abs(want)
    for k in params:
        np.testing.assert_allclose(params[k], local[k], rtol=1e-12, atol=1e-14)
    assert sorted(state) == sorted(state_l) and int(state["step"]) == 4


TORCH = {
    "sgd": ({"lr": 0.1}, "SGD", {"lr": 0.1}),
    "momentum": (
        {"lr": 0.1, "weight_decay": 0.01},
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    ),
    "adam": (
        {"lr": 0.01, "weight_decay": 0.1},
        "Adam",
        {"lr": 0.01, "weight_decay": 0.1},
    ),
    "adamw": ({"lr": 0.01}, "AdamW", {"lr": 0.01}),
}


@pytest.mark.parametrize("clip", [None, 0.7])
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("name", sorted(TORCH))
def test_optimizer_follows_torch(name, cosine, clip):
    """20 steps of random gradients against torch.optim (float64), with
    clip_grad_norm_ and CosineAnnealingLR."""
    torch = pytest.importorskip("torch")
    ours, cls, kwargs = TORCH[name]
    steps = 20
    sched = {"schedule": "cosine", "steps": steps} if cosine else {}
    opt = gd.Optimizer(name, clip_norm=clip, **ours, **sched)
    rng = np.random.default_rng(0)
    p0 = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    grads = [
        {k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(20)
    ]
    params = {k: v.copy() for k, v in p0.items()}
    state = opt.init_state(params)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p0.items()}
    theirs = getattr(torch.optim, cls)(list(tp.values()), **kwargs)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, steps) if cosine else None
    for g in grads:
        opt.update(params, state, g)
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
        theirs.step()
        if lr is not None:
            lr.step()
    for k, p in params.items():
        np.testing.assert_allclose(p, tp[k].detach().numpy(), rtol=1e-10, atol=1e-13)


def test_warmup_cosine_schedule():
    """Warm-up then cosine: lr·(k + 1)/W, then from lr down to 0 at step N."""
    opt = gd.Optimizer("sgd", lr=0.5, schedule="warmup-cosine", steps=10, warmup=4)
    lrs = [opt.lr(k) for k in range(11)]
    assert lrs[:5] == [0.125, 0.25, 0.375, 0.5, 0.5]
    assert lrs[10] == 0.0 and all(a > b for a, b in itertools.pairwise(lrs[4:]))
    np.testing.assert_allclose(lrs[7], 0.25)  # halfway through the cosine


def test_bad_input_is_one_clear_error(cluster):
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 6)
    client = cluster.client
    with pytest.raises(GraphgenError, match=r"shard 1: expected the arrays.*missing"):
        gd.value_and_grad(module, client, [batch, {"x": batch["x"]}], params)
    with pytest.raises(GraphgenError, match=r"shard 0: .*same length"):
        gd.value_and_grad(module, client, [dict(batch, x=batch["x"][:2])], params)
    with pytest.raises(GraphgenError, match=r"params: expected .*W1"):
        gd.value_and_grad(module, client, [batch], {"W1": params["W1"]})
    with pytest.raises(GraphgenError, match="at least one shard"):
        gd.value_and_grad(module, client, [], params)
    with pytest.raises(GraphgenError, match="refused by the module.*'x'"):
        bad = dict(batch, x=batch["x"].astype(np.float32))
        gd.value_and_grad(module, client, [bad], params, retries=0)
    with pytest.raises(GraphgenError, match="generated by graphgen"):
        gd.value_and_grad(np, client, [batch], params)
    with pytest.raises(GraphgenError, match="local:N"):
        gd.connect("local:zero")
    with pytest.raises(GraphgenError, match="compiled without an optimizer"):
        gd.train_step(module, client, [batch], params, {})
    with pytest.raises(GraphgenError, match="unknown optimizer 'adma'"):
        gd.Optimizer("adma")
    with pytest.raises(GraphgenError, match="cosine schedule needs steps"):
        gd.Optimizer("adam", schedule="cosine")


def test_missing_dask_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(GraphgenError, match=r"pip install 'graphgen\[dask\]'"):
        gd.connect("local:1")


def test_a_failed_step_changes_nothing(cluster):
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 6)
    opt = gd.Optimizer("adam", lr=0.1)
    state = gd.init_state(params, opt)
    gd.train_step(module, cluster.client, gd.split(batch, 2), params, state, opt)
    before = ({k: v.tobytes() for k, v in params.items()}, repr(state))
    bad = dict(batch, labels=batch["labels"].astype(np.float64))
    with pytest.raises(GraphgenError):
        gd.train_step(module, cluster.client, [batch, bad], params, state, opt)
    assert ({k: v.tobytes() for k, v in params.items()}, repr(state)) == before


def test_cli_distributed_check(cluster, cli, tmp_path):
    address = cluster.client.scheduler.address
    status, out, err = cli(
        "distributed-check", EXAMPLES / "mlp.yaml", "--dask", address, "--batch", "20"
    )
    assert status == 0, err
    assert "same bytes" in out and "max relative difference" in out
    # a loss that is no mean over the batch: the shards do not add up to it
    spec = tmp_path / "sum.yaml"
    spec.write_text(
        "inputs: {x: [batch, 3]}\n"
        "params: {W: [3, 2]}\n"
        "nodes:\n"
        "  z: {op: matmul, args: [x, W]}\n"
        "  s: {op: sum, args: [z]}\n"
        "  J: {op: square, args: [s]}\n"
        "loss: J\n"
    )
    status, out, err = cli("distributed-check", spec, "--dask", address, "--batch", "6")
    assert status == 1, err
    assert "not the whole batch's gradient" in out
    status, _, err = cli(
        "distributed-check", EXAMPLES / "mlp.yaml", "--dask", "local:x"
    )
    assert status == 2 and err.startswith("graphgen: error: --dask local:x")


# ---------------------------------------------------------------- last: a death


def test_a_worker_killed_during_a_step_changes_nothing(cluster):
    """The first worker to start a shard's task dies (os._exit) in the middle of the
    step; the scheduler runs the lost tasks again elsewhere and the nanny starts a new
    worker. The result has the bytes of an undisturbed step."""
    psutil = pytest.importorskip("psutil")
    module = graphgen.compile(MLP)
    batch, params = _batch(MLP, module, 16)
    shards = gd.split(batch, 4)
    want = _bytes(*gd.value_and_grad(module, cluster.client, shards, params))
    open(cluster.flag, "w").close()
    got = _bytes(*gd.value_and_grad(module, cluster.client, shards, params))
    assert not os.path.exists(cluster.flag), "no worker was killed"
    with open(cluster.flag + ".pid") as f:
        pid = int(f.read())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert got == want
