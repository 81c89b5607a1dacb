"""The generated training step: ``init_state``, ``train_step`` and the checkpoints.

Over 100 steps from the same params and batches, ``train_step`` must agree with an
independent NumPy implementation of PyTorch's optimizers (always run) and with
``torch.optim`` itself (float64, when torch is installed), for every optimizer and
schedule, with and without global-norm clipping. The spec reads a param twice (``W``, in
two layers), so an update placed before the param's last read would show.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import REPO

import graphgen
from graphgen.api import generate, report
from graphgen.codegen import optim
from graphgen.errors import GraphgenError

SPEC = """\
name: tied
inputs:
  x: [batch, 5]
  labels: {shape: [batch], dtype: int64}
params:
  W: [5, 5]
  b: {shape: [5], init: zeros}
  V: [5, 3]
  c: {shape: [3], init: 0.1}
nodes:
  z1: {op: matmul, args: [x, W]}
  a1: {op: add, args: [z1, b]}
  h1: {op: tanh, args: [a1]}
  z2: {op: matmul, args: [h1, W]}
  h2: {op: tanh, args: [z2]}
  z3: {op: matmul, args: [h2, V]}
  logits: {op: add, args: [z3, c]}
  loss: {op: softmax_cross_entropy, args: [logits, labels]}
outputs: [loss]
loss: loss
"""

STEPS = 100

# (optimizer, settings): every optimizer and schedule, weight decay and clipping
CONFIGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.01, "schedule": "cosine"}),
    ("momentum", {"lr": 0.05}),
    ("momentum", {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3}),
    ("momentum", {"lr": 0.05, "schedule": "warmup-cosine", "clip_norm": 0.5}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.01, "betas": (0.8, 0.99)}),
    ("adam", {"lr": 0.01, "schedule": "cosine", "clip_norm": 0.3}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "schedule": "warmup-cosine", "eps": 1e-6}),
    ("adamw", {"lr": 0.02, "weight_decay": 0.1, "clip_norm": 1.0}),
]
IDS = [
    f"{name}-" + "-".join(f"{k}={v}" for k, v in s.items()).replace(" ", "")
    for name, s in CONFIGS
]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "tied.yaml"
    path.write_text(SPEC)
    return graphgen.load(path)


def batches(n=STEPS, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.standard_normal((size, 5)),
            "labels": rng.integers(0, 3, size),
        }
        for _ in range(n)
    ]


def full_settings(name, settings):
    s = dict(settings)
    if s.get("schedule", "constant") != "constant":
        s["steps"] = STEPS
    return optim.optimizer(name, **s)


def module(graph, name, settings, backend="numpy"):
    return graphgen.compile(
        graph, backend=backend, optimizer=full_settings(name, settings)
    )


# ---------------------------------------------------------------- the reference


def reference_lr(opt, k):
    """PyTorch's schedules, written out: the learning rate of step k = 0, 1, ..."""
    if opt.schedule == "cosine":
        return opt.lr * (1 + math.cos(math.pi * k / opt.steps)) / 2
    if opt.schedule == "warmup-cosine":
        w = opt.warmup
        if k < w:
            return opt.lr * (k + 1) / w
        return opt.lr * (1 + math.cos(math.pi * (k - w) / (opt.steps - w))) / 2
    return opt.lr


def reference_run(m, opt, params, data):
    """torch.optim's algorithms in plain NumPy, on value_and_grad's gradients."""
    params = {k: v.copy() for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in params.items()}
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    losses = []
    for k, batch in enumerate(data):
        loss, grads = m.value_and_grad(**batch, **params)
        losses.append(loss)
        if opt.clip_norm is not None:
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            coef = min(1.0, opt.clip_norm / (total + 1e-6))
            grads = {n: g * coef for n, g in grads.items()}
        lr, t = reference_lr(opt, k), k + 1
        for n, p in params.items():
            g = grads[n]
            if opt.name in ("sgd", "momentum"):
                g = g + opt.weight_decay * p
                if opt.name == "momentum":
                    buf[n] = opt.momentum * buf[n] + g
                    g = buf[n]
                params[n] = p - lr * g
                continue
            b1, b2 = opt.betas
            if opt.name == "adamw":
                p = p * (1 - lr * opt.weight_decay)
            else:
                g = g + opt.weight_decay * p
            m1[n] = b1 * m1[n] + (1 - b1) * g
            m2[n] = b2 * m2[n] + (1 - b2) * g * g
            mhat = m1[n] / (1 - b1**t)
            vhat = m2[n] / (1 - b2**t)
            params[n] = p - lr * mhat / (np.sqrt(vhat) + opt.eps)
    return params, losses


def generated_run(m, params, data):
    params = {k: v.copy() for k, v in params.items()}
    state = m.init_state(params)
    losses = [m.train_step(params, state, **batch) for batch in data]
    return params, state, losses


@pytest.mark.parametrize(("name", "settings"), CONFIGS, ids=IDS)
def test_train_step_matches_a_numpy_reference(graph, name, settings):
    m = module(graph, name, settings)
    opt = full_settings(name, settings)
    data = batches()
    start = m.init_params(seed=1)
    want, want_losses = reference_run(m, opt, start, data)
    got, state, losses = generated_run(m, start, data)
    assert int(state["step"]) == STEPS
    np.testing.assert_allclose(losses, want_losses, rtol=1e-9, atol=1e-12)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-10, err_msg=n)
        assert not np.allclose(got[n], start[n]), f"{n} did not move"


def test_numba_train_step_matches_the_numpy_one():
    """The Numba backend's update loops (Adam, cosine schedule, clipping) against the
    NumPy module's, on the smallest example (its kernels compile quickest)."""
    G = graphgen.load(REPO / "examples" / "tiny.yaml")
    opt = optim.optimizer("adam", lr=0.05, clip_norm=0.3, schedule="cosine", steps=30)
    rng = np.random.default_rng(3)
    data = [{"x": rng.random((8, 2)), "t": rng.random((8, 1))} for _ in range(30)]
    a = graphgen.compile(G, optimizer=opt)
    b = graphgen.compile(G, backend="numba", optimizer=opt)
    start = a.init_params(seed=2)
    want, want_state, want_losses = generated_run(a, start, data)
    got, state, losses = generated_run(b, start, data)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-11, atol=1e-13, err_msg=n)
    for k in want_state:
        np.testing.assert_allclose(state[k], want_state[k], rtol=1e-11, atol=1e-13)


def test_numba_train_step_is_value_and_grad_then_the_update(graph):
    """The Numba train_step (one compiled function, each update inside it) against
    value_and_grad followed by the module's own update of each param: the same
    kernels and the same update loops, so the same bits in float64 and float32; and
    against the train_step that keeps its statements at Python level."""
    opt = full_settings("adam", {"lr": 0.01, "weight_decay": 0.01})
    data = batches(20)
    for dtype in ("float64", "float32"):
        m = graphgen.compile(graph, backend="numba", dtype=dtype, optimizer=opt)
        assert "_train_step_kernel" in m.__source__
        start = m.init_params(seed=1)
        cast = [
            {k: v.astype(m.DTYPE) if k == "x" else v for k, v in b.items()}
            for b in data
        ]
        got, state, losses = generated_run(m, start, cast)
        params = {k: v.copy() for k, v in start.items()}
        want = m.init_state(params)
        for k, batch in enumerate(cast):
            loss, grads = m.value_and_grad(**batch, **params)
            assert losses[k] == loss
            t, lr = m._next_step(want)
            for n, p in params.items():
                slots = [want[f"{s}.{n}"] for s in m.SLOTS]
                m._adam(p, grads[n], *slots, lr, t, 1.0)
        for n, p in params.items():
            np.testing.assert_array_equal(got[n], p, err_msg=n)
        for k in state:
            np.testing.assert_array_equal(state[k], want[k], err_msg=k)
    m = graphgen.compile(graph, backend="numba", optimizer=opt)
    py = graphgen.compile(graph, backend="numba", optimizer=opt, whole=False)
    assert "_train_step_kernel" not in py.__source__
    start = m.init_params(seed=1)
    got, _, losses = generated_run(m, start, data)
    want, _, want_losses = generated_run(py, start, data)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-11, atol=1e-13, err_msg=n)


def test_numba_updates_follow_the_gradient_inside_the_kernel(graph):
    """In train_step's kernel each update comes after the last statement that writes
    or reads its gradient and after the last read of the param (W is read by two
    layers, its gradient is the sum of two terms), and nothing after it reads them."""
    src = generate(graph, backend="numba", optimizer="adam")
    lines = src[src.index("def _train_step_kernel") :].splitlines()
    lines = [s for s in lines if not s.lstrip().startswith("#")]
    names = ("W", "b", "V", "c")
    at = {n: lines.index(f"        {n}.reshape(-1),") - 1 for n in names}
    assert all(lines[i] == "    _adam_loop(" for i in at.values())

    def mentions(i, name):
        return re.search(rf"\b{name}\b", lines[i]) is not None

    for n in names:
        call = range(at[n], at[n] + 10)  # the update's own lines
        for name in (n, f"{n}_bar"):
            uses = [i for i in range(len(lines)) if mentions(i, name) and i not in call]
            assert max(uses) < at[n], (n, name, lines[max(uses)])
    assert at["c"] < at["V"] < at["b"] < at["W"]


# ---------------------------------------------------------------- torch.optim


def torch_run(m, opt, params, data):
    """torch.optim itself, fed value_and_grad's gradients at its own params."""
    torch = pytest.importorskip(
        "torch", reason="PyTorch (the test extra) not installed"
    )
    tp = {n: torch.tensor(v, dtype=torch.float64) for n, v in params.items()}
    for p in tp.values():
        p.requires_grad_(True)
    ps = list(tp.values())
    if opt.name in ("sgd", "momentum"):
        o = torch.optim.SGD(
            ps, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    else:
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        o = cls(
            ps, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
    sched = None
    if opt.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=opt.steps)
    elif opt.schedule == "warmup-cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            o, lambda k: reference_lr(opt, k) / opt.lr
        )
    for batch in data:
        arrays = {n: p.detach().numpy().copy() for n, p in tp.items()}
        _, grads = m.value_and_grad(**batch, **arrays)
        for n, p in tp.items():
            p.grad = torch.tensor(grads[n], dtype=torch.float64)
        if opt.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(ps, opt.clip_norm)
        o.step()
        if sched is not None:
            sched.step()
    return {n: p.detach().numpy() for n, p in tp.items()}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(("name", "settings"), CONFIGS, ids=IDS)
def test_train_step_matches_torch_optim(graph, name, settings, backend):
    """Both backends; the Numba train_step is one compiled function with the updates
    inside (with clipping, after the clipping factor: two phases)."""
    m = module(graph, name, settings, backend)
    if backend == "numba":
        assert hasattr(m, "_train_step_kernel")
    opt = full_settings(name, settings)
    data = batches()
    start = m.init_params(seed=1)
    want = torch_run(m, opt, start, data)
    got, _, _ = generated_run(m, start, data)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=0, atol=1e-10, err_msg=n)


# -------------------------------------------------------------- the generated code


def test_updates_follow_the_last_read_of_param_and_gradient(graph):
    src = generate(graph, optimizer="adam")
    body = src[src.index("def train_step") : src.index("def init_params")]
    lines = body.splitlines()
    at = {
        name: next(i for i, s in enumerate(lines) if s.startswith(f"    _adam({name},"))
        for name in ("W", "b", "V", "c")
    }
    reads_w = [i for i, s in enumerate(lines) if "@ W" in s and "_bar" not in s[:12]]
    assert at["W"] > max(i for i, s in enumerate(lines) if "W_bar = " in s)
    assert at["W"] > max(reads_w)
    # c's and V's gradients are complete long before W's: they are updated first
    assert at["c"] < at["V"] < at["W"]
    assert "del W_bar" in body


def test_two_phases_with_clipping_and_the_report_says_why(graph):
    src = generate(graph, optimizer=optim.optimizer("sgd", clip_norm=1.0))
    body = src[src.index("def train_step") : src.index("def init_params")]
    clip = body.index("clip = _clip_coef(")
    assert all(body.index(f"_sgd({n},") > clip for n in ("W", "b", "V", "c"))
    text = report(graph, optimizer=optim.optimizer("sgd", clip_norm=1.0))
    assert "two phases: global-norm clipping" in text
    text = report(graph, optimizer="adam")
    assert "train_step (adam): planned peak" in text
    assert "gradient's buffer dies there" in text


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_training_module_is_deterministic_and_formatted(graph, backend):
    from test_codegen import ruff_diff

    opt = full_settings("adamw", {"schedule": "warmup-cosine", "clip_norm": 1.0})
    a = generate(graph, backend=backend, optimizer=opt)
    assert a == generate(graph, backend=backend, optimizer=opt)
    assert ruff_diff(a) == ""


def test_train_step_refuses_arrays_it_cannot_update_in_place(graph):
    m = module(graph, "adam", {})
    params = m.init_params()
    state = m.init_state(params)
    batch = batches(1)[0]
    frozen = dict(params, W=params["W"].copy())
    frozen["W"].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['W'\]: train_step updates it"):
        m.train_step(frozen, state, **batch)
    with pytest.raises(ValueError, match=r"state: expected a dict with keys"):
        m.train_step(params, {"step": state["step"]}, **batch)
    with pytest.raises(ValueError, match=r"are params: pass them in params"):
        m.train_step(params, state, **batch, W=params["W"])
    assert int(state["step"]) == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"schedule": "cosine"}, "the cosine schedule needs --steps"),
        ({"betas": "0.9"}, "--betas expects B1,B2"),
        ({"lr": -1.0}, "--lr must be in"),
        ({"momentum": 0.5}, "--momentum applies to the momentum optimizer"),
    ],
)
def test_bad_optimizer_settings_name_the_flag(settings, message):
    with pytest.raises(GraphgenError, match=message):
        optim.optimizer("adam", **settings)


def test_cli_compile_with_an_optimizer(cli, tmp_path):
    spec = tmp_path / "tied.yaml"
    spec.write_text(SPEC)
    status, out, err = cli("compile", spec, "--optimizer", "adamw", "--lr", "0.01")
    assert status == 0 and "def train_step(params, state, **arrays):" in out
    assert "torch.optim.AdamW" in out
    status, _, err = cli("compile", spec, "--lr", "0.01")
    assert status == 2 and err == "graphgen: error: --lr needs --optimizer\n"
    status, _, err = cli(
        "compile",
        REPO / "examples" / "tiny.yaml",
        "--report",
        "--optimizer",
        "sgd",
        "--clip-norm",
        "1",
    )
    assert status == 0 and "train_step runs in two phases" in err


def test_numba_train_step_copies_inputs_its_kernel_cannot_take(graph):
    """train_step's kernel takes C-contiguous arrays: a Fortran-ordered, read-only or
    strided input is copied (the params, updated in place, must be C-contiguous)."""
    m = module(graph, "adam", {"lr": 0.01}, "numba")
    batch = batches(1)[0]
    start = m.init_params(seed=1)
    want, _, want_losses = generated_run(m, start, [batch])
    frozen = batch["x"].copy()
    frozen.flags.writeable = False
    for other in (
        {"x": np.asfortranarray(batch["x"])},
        {"labels": np.repeat(batch["labels"], 2)[::2]},
        {"x": frozen},
    ):
        got, state, losses = generated_run(m, start, [{**batch, **other}])
        assert losses == want_losses and int(state["step"]) == 1
        for n in want:
            np.testing.assert_array_equal(got[n], want[n], err_msg=n)


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_checkpoint_round_trip(graph, tmp_path, suffix):
    m = module(graph, "adam", {})
    params, state, _ = generated_run(m, m.init_params(), batches(3))
    path = tmp_path / f"ckpt{suffix}"
    m.save_checkpoint(path, params, state)
    p2, s2 = m.load_checkpoint(path)
    assert list(p2) == list(params) and list(s2) == list(state)
    for n in params:
        np.testing.assert_array_equal(p2[n], params[n])
    for k in state:
        np.testing.assert_array_equal(s2[k], state[k])
        assert s2[k].dtype == state[k].dtype
    # a loaded checkpoint continues exactly where the saved run stood
    batch = batches(1, seed=7)[0]
    assert m.train_step(p2, s2, **batch) == m.train_step(params, state, **batch)
    for n in params:
        np.testing.assert_array_equal(p2[n], params[n])


def test_checkpoint_is_read_by_the_safetensors_package(graph, tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
    m = module(graph, "momentum", {})
    params, state, _ = generated_run(m, m.init_params(), batches(2))
    path = tmp_path / "ckpt.safetensors"
    m.save_checkpoint(path, params, state)
    read = st.load_file(str(path))
    assert sorted(read) == sorted(
        [f"params/{n}" for n in params] + [f"state/{k}" for k in state]
    )
    np.testing.assert_array_equal(read["params/W"], params["W"])
    assert read["state/step"].dtype == np.int64 and int(read["state/step"]) == 2
    # and a file the package writes loads back
    st.save_file(read, str(tmp_path / "theirs.safetensors"))
    p2, s2 = m.load_checkpoint(tmp_path / "theirs.safetensors")
    np.testing.assert_array_equal(p2["V"], params["V"])
    np.testing.assert_array_equal(s2["momentum_buffer.V"], state["momentum_buffer.V"])


def test_a_damaged_checkpoint_is_one_clear_error(graph, tmp_path):
    m = module(graph, "sgd", {})
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        m.load_checkpoint(path)


HOSTILE = """\
name: hostile
inputs:
  params: [batch, 3]
  state: [batch, 1]
params:
  step: [3, 1]
  lr: {shape: [1], init: zeros}
  "exp_avg.step": [1]
nodes:
  z: {op: matmul, args: [params, step]}
  y: {op: add, args: [z, lr]}
  yy: {op: mul, args: [y, "exp_avg.step"]}
  clip: {op: mse, args: [yy, state]}
outputs: [clip]
loss: clip
"""


@pytest.mark.parametrize(("backend", "clip_norm"), [("numpy", 1.0), ("numba", None)])
def test_spec_names_that_train_step_uses_itself(tmp_path, backend, clip_norm):
    """Inputs and params named params, state, step, lr, clip and a dotted name: the
    module's own names step aside, the state keys stay apart, the code is formatted
    (in Numba, train_step's kernel takes the state arrays under names of their own)."""
    from test_codegen import ruff_diff

    spec = tmp_path / "hostile.yaml"
    spec.write_text(HOSTILE)
    G = graphgen.load(spec)
    opt = optim.optimizer("adam", clip_norm=clip_norm)
    src = generate(G, backend=backend, optimizer=opt)
    assert ruff_diff(src) == ""
    m = graphgen.compile(G, backend=backend, optimizer=opt)
    assert hasattr(m, "_train_step_kernel") == (backend == "numba")
    p = m.init_params()
    s = m.init_state(p)
    assert list(s) == [
        "step",
        "exp_avg.step",
        "exp_avg.lr",
        "exp_avg.exp_avg.step",
        "exp_avg_sq.step",
        "exp_avg_sq.lr",
        "exp_avg_sq.exp_avg.step",
    ]
    before = {k: v.copy() for k, v in p.items()}
    batch = {"params": np.ones((4, 3)), "state": np.ones((4, 1))}
    loss, _ = m.value_and_grad(**batch, **before)
    assert m.train_step(p, s, **batch) == loss
    assert int(s["step"]) == 1
    assert any(not np.array_equal(p[k], before[k]) for k in p)
