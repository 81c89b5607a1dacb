"""Optimizer update forms: what ``train_step`` does with each gradient.

A module compiled with an optimizer (``graphgen compile --optimizer adam``) gets
``init_state(params)`` and ``train_step(params, state, **batch)``. The formulas and
defaults are PyTorch's (``torch.optim.SGD``, ``Adam``, ``AdamW``, with
``torch.nn.utils.clip_grad_norm_`` for ``clip_norm``); each optimizer is one row of
:data:`KINDS`: the state it keeps per parameter (PyTorch's names), the module helper that
updates one parameter in place (``templates/<backend>/training.py.j2``) and the math its
comments show. Schedules are rows of :data:`SCHEDULES`: the learning rate of step ``k``
(0, 1, ...) as an expression of the module's constants, read off the step counter in the
state, so a schedule needs no recompilation.

:class:`Optimizer` is the validated configuration; the program
(:meth:`graphgen.codegen.program.Program.train_step_function`) places each update right
after the last statement that reads the parameter's gradient or the parameter itself.
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import CodegenError
from .layout import INDENT, bracketed, literal
from .naming import Code


@dataclasses.dataclass(frozen=True)
class Kind:
    """One optimizer: its state per parameter, its update helper and its math."""

    torch: str  # the PyTorch class whose formulas it follows
    slots: tuple  # state arrays per parameter, PyTorch's names
    helper: str  # the module helper that updates one parameter in place
    math: tuple  # the update, one line each, g the gradient, t the step (1, 2, ...)
    hyper: tuple  # the hyperparameters it reads
    decoupled: bool = False  # weight decay on the param (AdamW), not the gradient
    # param-sized temporaries the NumPy helper holds at once (for --report's peak):
    # SGD's lr·g, Adam's scratch array; clipping and (coupled) weight decay add one
    temporaries: int = 1
    # what the Numba backend's compiled loop (``_<helper>_loop``) reads of a step, after
    # p, g and the state arrays and before clip (``_<helper>_scalars(lr, t)``)
    scalars: tuple = ("lr",)


KINDS = {
    "sgd": Kind(
        "torch.optim.SGD",
        (),
        "sgd",
        ("g ← g + λ·p (weight decay λ)", "p ← p − lr·g"),
        ("lr", "weight_decay"),
    ),
    "momentum": Kind(
        "torch.optim.SGD",
        ("momentum_buffer",),
        "sgd",
        (
            "g ← g + λ·p (weight decay λ)",
            "b ← μ·b + g (momentum μ, dampening 0, b = 0 before step 1)",
            "p ← p − lr·b",
        ),
        ("lr", "momentum", "weight_decay"),
    ),
    "adam": Kind(
        "torch.optim.Adam",
        ("exp_avg", "exp_avg_sq"),
        "adam",
        (
            "g ← g + λ·p (weight decay λ, added to the gradient)",
            "m ← m + (1 − β1)·(g − m)",
            "v ← β2·v + (1 − β2)·g²",
            "p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)",
        ),
        ("lr", "betas", "eps", "weight_decay"),
        scalars=("lr", "step_size", "bias2_sqrt"),
    ),
    "adamw": Kind(
        "torch.optim.AdamW",
        ("exp_avg", "exp_avg_sq"),
        "adam",
        (
            "p ← p·(1 − lr·λ) (decoupled weight decay λ)",
            "m ← m + (1 − β1)·(g − m)",
            "v ← β2·v + (1 − β2)·g²",
            "p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)",
        ),
        ("lr", "betas", "eps", "weight_decay"),
        decoupled=True,
        scalars=("lr", "step_size", "bias2_sqrt"),
    ),
}

# schedule -> (the body of ``_lr(k)``, the learning rate of step k = 0, 1, ..., one
# line each; its math); every schedule but the first needs the number of steps N
SCHEDULES = {
    "constant": (("return _LR",), "lr(k) = lr"),
    "cosine": (
        ("return _LR * (1.0 + np.cos(np.pi * k / _STEPS)) / 2.0",),
        "lr(k) = lr·(1 + cos(π·k/N))/2 (CosineAnnealingLR, T_max = N, eta_min = 0)",
    ),
    "warmup-cosine": (
        (
            "if k < _WARMUP:",
            "    return _LR * (k + 1) / _WARMUP",
            "return _LR * (1.0 + np.cos(np.pi * (k - _WARMUP) / (_STEPS - _WARMUP))) / 2.0",
        ),
        "lr(k) = lr·(k + 1)/W for k < W, then lr·(1 + cos(π·(k − W)/(N − W)))/2",
    ),
}


# PyTorch's defaults, per optimizer where they differ
DEFAULT_LR = 1e-3
DEFAULT_MOMENTUM = {"momentum": 0.9}  # torch's SGD default is 0: "momentum" means 0.9
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2}
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8
# clip_grad_norm_: coefficient C / (‖g‖ + 1e-6), clamped to 1
CLIP_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A validated optimizer configuration (PyTorch's defaults where not given)."""

    name: str
    lr: float = DEFAULT_LR
    momentum: float = 0.0
    betas: tuple = DEFAULT_BETAS
    eps: float = DEFAULT_EPS
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: str = next(iter(SCHEDULES))
    steps: int | None = None
    warmup: int = 0

    @property
    def kind(self) -> Kind:
        return KINDS[self.name]

    def table(self):
        """The ``OPTIMIZER`` table of the module: every setting, as literals."""
        return [
            (literal(k), literal(v))
            for k, v in (
                ("name", self.name),
                ("lr", self.lr),
                ("momentum", self.momentum),
                ("betas", self.betas),
                ("eps", self.eps),
                ("weight_decay", self.weight_decay),
                ("clip_norm", self.clip_norm),
                ("schedule", self.schedule),
                ("steps", self.steps),
                ("warmup", self.warmup),
            )
        ]


def optimizer(
    name,
    *,
    lr=None,
    momentum=None,
    betas=None,
    eps=None,
    weight_decay=None,
    clip_norm=None,
    schedule=None,
    steps=None,
    warmup=None,
):
    """The :class:`Optimizer` ``name`` with PyTorch's defaults for what is not given;
    a :class:`~graphgen.errors.CodegenError` naming the setting for a bad value."""
    if isinstance(name, Optimizer):
        return name
    if isinstance(name, dict):  # {"name": "adam", "lr": 1e-3, ...}
        settings = dict(name)
        return optimizer(settings.pop("name", None), **settings)
    if not isinstance(name, str) or name not in KINDS:
        raise CodegenError(f"unknown optimizer {name!r} (known: {', '.join(KINDS)})")
    schedule = schedule or next(iter(SCHEDULES))
    if schedule not in SCHEDULES:
        raise CodegenError(
            f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})"
        )

    def number(key, v, low=0.0, high=math.inf, closed=True):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise CodegenError(f"--{key} expects a number, got {v!r}") from None
        ok = low <= v <= high if closed else low <= v < high
        if not math.isfinite(v) or not ok:
            bound = "]" if closed else ")"
            raise CodegenError(f"--{key} must be in [{low}, {high}{bound}, got {v!r}")
        return v

    lr = number("lr", DEFAULT_LR if lr is None else lr)
    if momentum is not None and name != "momentum":
        raise CodegenError(f"--momentum applies to the momentum optimizer, not {name}")
    momentum = number(
        "momentum",
        DEFAULT_MOMENTUM.get(name, 0.0) if momentum is None else momentum,
    )
    if betas is not None and not name.startswith("adam"):
        raise CodegenError(f"--betas applies to adam and adamw, not {name}")
    if isinstance(betas, str):
        betas = betas.split(",")
    betas = tuple(DEFAULT_BETAS if betas is None else betas)
    if len(betas) != 2:
        raise CodegenError(f"--betas expects B1,B2, got {betas!r}")
    betas = tuple(number("betas", b, 0.0, 1.0, closed=False) for b in betas)
    eps = number("eps", DEFAULT_EPS if eps is None else eps)
    wd = DEFAULT_WEIGHT_DECAY.get(name, 0.0) if weight_decay is None else weight_decay
    weight_decay = number("weight-decay", wd)
    if clip_norm is not None:
        clip_norm = number("clip-norm", clip_norm)
        if clip_norm == 0.0:
            raise CodegenError("--clip-norm must be positive")
    if schedule != next(iter(SCHEDULES)) and (
        steps is None or int(steps) != steps or steps < 1
    ):
        raise CodegenError(
            f"the {schedule} schedule needs --steps N (the number of steps, >= 1)"
        )
    steps = None if steps is None else int(steps)
    if schedule == "warmup-cosine":
        warmup = max(1, steps // 10) if warmup is None else int(warmup)
        if not 1 <= warmup < steps:
            raise CodegenError(f"--warmup must be in [1, {steps}), got {warmup}")
    elif warmup:
        raise CodegenError("--warmup applies to the warmup-cosine schedule")
    return Optimizer(
        name,
        lr,
        momentum,
        betas,
        eps,
        weight_decay,
        clip_norm,
        schedule,
        steps,
        warmup or 0,
    )


def state_keys(opt, params):
    """The keys of the state ``init_state`` makes: ``step``, then per slot each param's
    array (``exp_avg.W1``: PyTorch's state name, a dot, the param's name)."""
    return ["step"] + [f"{s}.{p}" for s in opt.kind.slots for p in params]


def header(opt):
    """The comment lines above ``train_step``'s first update: the optimizer's math."""
    lines = [
        f"Each param p is updated as {opt.kind.torch} does (g its gradient, t the "
        "step, 1, 2, ...): " + "; ".join(opt.kind.math) + ".",
        "Learning rate: " + SCHEDULES[opt.schedule][1] + ", k = t − 1.",
    ]
    if opt.clip_norm is not None:
        lines.append(
            f"Every gradient is first scaled by min(1, {opt.clip_norm!r}/(‖g‖ + 1e-6)), "
            "‖g‖ the 2-norm of all gradients together (torch.nn.utils.clip_grad_norm_)."
        )
    return lines


def update_call(opt, param, grad, slots, clip, helper_name, lr, t) -> Code:
    """``_adam(W1, W1_bar, state["exp_avg.W1"], ..., lr, t, clip)`` laid out as ruff."""
    args = [param, grad, *slots, lr, t, clip]
    return bracketed(helper_name, args, "", INDENT)


def two_phase_reason(opt):
    """Why ``train_step`` runs in two phases, or None when it runs in one."""
    if opt.clip_norm is None:
        return None
    return (
        "global-norm clipping (--clip-norm) scales every gradient by a factor that "
        "needs the norm of all of them, so every update waits for the whole backward "
        "pass (two phases: gradients, then updates)"
    )


def temporaries(opt):
    """Param-sized temporaries one update holds at once in the NumPy helper."""
    extra = (opt.clip_norm is not None) + (
        opt.weight_decay != 0.0 and not opt.kind.decoupled
    )
    return opt.kind.temporaries + extra
