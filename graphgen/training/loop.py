"""``graphgen train``: the loop around a generated ``train_step``.

The spec is compiled once per spec hash and settings (the module is cached beside
:func:`graphgen.api.cache_dir`'s others); each epoch visits the training examples in the
order of a permutation drawn from ``(seed, epoch)``, so a run is a function of its seed
alone and a resumed run replays the rest of the epoch it stopped in: after ``--resume``
the params end bit-identical to an uninterrupted run's. After each epoch: the validation
loss (and accuracy, for a classification loss whose logits are an output), the 2-norm of
each parameter's gradient on a fixed probe batch (the first ``batch_size`` training
examples), a row of ``history.csv``, ``curves.png`` and a checkpoint
(``checkpoint.safetensors`` plus ``run.json``, each written whole or not at all).

Ctrl-C is noted by a signal handler and acted on between steps, so a step is never cut
in half: the loop saves a checkpoint where it stands and returns. A non-finite loss stops
the run with the step number, keeping the last checkpoint (the one before the bad step).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import signal
import sys
import time

import numpy as np

from .. import graph as g
from ..api import cache_dir, generate, load, lower
from ..codegen import optim
from ..errors import GraphgenError
from ..version import __version__
from . import data as data_mod

CHECKPOINT = "checkpoint.safetensors"
RUN = "run.json"
HISTORY = "history.csv"
CURVES = "curves.png"


class TrainingError(GraphgenError):
    """A run that cannot start or go on (bad settings, a non-finite loss)."""


@dataclasses.dataclass
class Settings:
    """What a run is: everything ``--resume`` must find the same."""

    spec: str
    data: str
    val: str | None
    epochs: int
    batch_size: int
    optimizer: dict
    backend: str = "numpy"
    seed: int = 0


def _need(name, extra="training"):
    try:
        return __import__(name)
    except ImportError:
        raise TrainingError(
            f"graphgen train needs {name}: pip install 'graphgen[{extra}]'"
        ) from None


def compile_cached(spec, backend, opt):
    """The module of ``spec`` with ``opt``'s train_step, compiled once per hash of the
    spec's bytes, backend, optimizer and graphgen version."""
    with open(spec, "rb") as f:
        h = hashlib.sha256(f.read())
    h.update(f"\0{backend}\0{opt!r}\0{__version__}".encode())
    name = f"graphgen_train_{h.hexdigest()[:16]}"
    path = os.path.join(cache_dir(), name + ".py")
    G = load(spec)
    if not os.path.exists(path):
        source = generate(G, backend=backend, optimizer=opt)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(source)
        os.replace(tmp, path)
    spec_ = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[name] = module
    spec_.loader.exec_module(module)
    return G, module


class _Interrupt:
    """Ctrl-C noted, acted on between steps."""

    def __init__(self):
        self.hit = False
        self.old = None

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGINT, self._note)
        except ValueError:  # not the main thread: Ctrl-C stays Python's
            self.old = None
        return self

    def _note(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _evaluate(module, params, arrays, n, batch_size, names):
    """Mean loss (weighted by batch size) and accuracy over ``arrays``."""
    loss_name, logits_name, labels_name = names
    total, correct = 0.0, 0
    for lo in range(0, n, batch_size):
        batch = {k: v[lo : lo + batch_size] for k, v in arrays.items()}
        size = min(batch_size, n - lo)
        if loss_name in module.OUTPUTS:
            out = module.forward(**batch, **params)
            loss = float(out[loss_name])
        else:
            loss, _ = module.value_and_grad(**batch, **params)
            out = module.forward(**batch, **params) if logits_name else {}
        total += loss * size
        if logits_name:
            pred = np.argmax(out[logits_name], axis=-1)
            correct += int(np.sum(pred == batch[labels_name]))
    return total / n, (correct / n if logits_name else None)


def train(
    spec,
    data,
    *,
    out,
    val=None,
    test=None,
    epochs=1,
    batch_size=32,
    optimizer="adam",
    backend="numpy",
    seed=0,
    resume=False,
    progress=True,
    stop_after=None,
    log=print,
):
    """Train ``spec`` on ``data`` (an .npz) and write the run to directory ``out``.

    ``optimizer``: a name or a dict of :func:`graphgen.codegen.optim.optimizer`'s
    settings with ``name`` (``steps``, for the cosine schedules, is set to the run's
    number of steps). ``resume``: continue the run in ``out`` (its settings are read from
    its ``run.json``). ``stop_after``: act as if Ctrl-C came after that many steps (for
    tests). ``test``: arrays evaluated once at the end (not part of the run's
    settings). Returns the run's ``run.json`` record.
    """
    out = os.fspath(out)
    record_path = os.path.join(out, RUN)
    if resume:
        try:
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            raise TrainingError(f"{out}: no run to resume (no {RUN})") from None
        s = Settings(**record["settings"])
    else:
        if os.path.exists(record_path):
            raise TrainingError(
                f"{out}: holds a run already; --resume {out} continues it, or choose "
                "another -o"
            )
        if isinstance(optimizer, str):
            optimizer = {"name": optimizer}
        s = Settings(
            os.fspath(spec),
            os.fspath(data),
            None if val is None else os.fspath(val),
            int(epochs),
            int(batch_size),
            dict(optimizer),
            backend,
            int(seed),
        )
        if s.epochs < 1 or s.batch_size < 1:
            raise TrainingError("--epochs and --batch-size must be at least 1")
        record = None
    G0 = load(s.spec)
    A = lower(G0)
    if A.graph.get("loss") is None:
        raise TrainingError(f"{s.spec}: the spec has no loss to train on")
    inputs = [n for n in A if A.nodes[n].get(g.KIND) == g.INPUT]
    batch_dims = {
        A.nodes[n][g.SHAPE][0] if A.nodes[n][g.SHAPE] else None for n in inputs
    }
    if len(batch_dims) != 1 or not isinstance(next(iter(batch_dims)), str):
        raise TrainingError(
            f"{s.spec}: every input needs the same symbolic batch size as its first "
            "axis (e.g. x: [batch, 64])"
        )
    classes = data_mod.label_classes(A)
    # the module is compiled after the data is checked against a plain module's tables
    probe = _Tables(A)
    train_arrays, n = data_mod.load(s.data, probe, classes)
    val_arrays, n_val = (None, 0)
    if s.val is not None:
        val_arrays, n_val = data_mod.load(s.val, probe, classes)
    per_epoch = math.ceil(n / s.batch_size)
    settings = dict(s.optimizer)
    name = settings.pop("name")
    if settings.get("schedule") not in (None, next(iter(optim.SCHEDULES))):
        settings.setdefault("steps", per_epoch * s.epochs)
    opt = optim.optimizer(name, **{k: v for k, v in settings.items() if v is not None})
    _, module = compile_cached(s.spec, s.backend, opt)
    labels = next(iter(classes), None)
    logits = data_mod.logits_of(A, labels) if labels is not None else None
    if logits is not None and logits not in module.OUTPUTS:
        logits = None
    loss_name = A.graph["loss"]

    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, CHECKPOINT)
    if record is not None:
        params, state = module.load_checkpoint(ckpt)
    else:
        params = module.init_params(seed=s.seed)
        state = module.init_state(params)
        record = {
            "settings": dataclasses.asdict(s),
            "graphgen": __version__,
            "epoch": 0,  # epochs finished
            "batch": 0,  # batches of the current epoch finished
            "sums": {"loss": 0.0, "seconds": 0.0},
            "history": [],
        }
    probe_batch = {k: v[: s.batch_size] for k, v in train_arrays.items()}

    saved = {"step": int(state["step"])}

    def save():
        module.save_checkpoint(ckpt, params, state)
        saved["step"] = int(state["step"])
        tmp = f"{record_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, record_path)

    if not os.path.exists(ckpt):
        save()
    tqdm = _need("tqdm").tqdm if progress else None
    steps_done = 0
    with _Interrupt() as interrupt:
        while record["epoch"] < s.epochs:
            epoch = record["epoch"]
            order = np.random.default_rng([s.seed, epoch]).permutation(n)
            bar = (
                tqdm(
                    total=per_epoch,
                    initial=record["batch"],
                    desc=f"epoch {epoch + 1}/{s.epochs}",
                    unit="batch",
                    leave=True,
                    file=sys.stderr,
                )
                if tqdm
                else None
            )
            while record["batch"] < per_epoch:
                if interrupt.hit or (
                    stop_after is not None and steps_done >= stop_after
                ):
                    if bar:
                        bar.close()
                    save()
                    if record["history"]:
                        write_curves(out, record["history"])
                    step = int(state["step"])
                    log(
                        f"interrupted after step {step} (epoch {epoch + 1}, batch "
                        f"{record['batch']}); checkpoint saved: {ckpt}; continue with "
                        f"--resume {out}"
                    )
                    record["interrupted"] = True
                    return record
                b = record["batch"]
                idx = order[b * s.batch_size : (b + 1) * s.batch_size]
                batch = {k: v[idx] for k, v in train_arrays.items()}
                t0 = time.perf_counter()
                with np.errstate(all="ignore"):  # a non-finite loss is said below
                    loss = module.train_step(params, state, **batch)
                dt = time.perf_counter() - t0
                if not math.isfinite(loss):
                    if bar:
                        bar.close()
                    raise TrainingError(
                        f"the loss is {loss} at step {int(state['step'])} (epoch "
                        f"{epoch + 1}, batch {b + 1}); stopped: {ckpt} keeps the last "
                        f"good checkpoint (step {saved['step']}); try a lower --lr or "
                        "--clip-norm"
                    )
                steps_done += 1
                record["batch"] = b + 1
                record["sums"]["loss"] += loss * len(idx)
                record["sums"]["seconds"] += dt
                if bar:
                    bar.update(1)
                    rate = len(idx) / dt if dt > 0 else float("inf")
                    bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}")
            if bar:
                bar.close()
            row = {
                "epoch": epoch + 1,
                "step": int(state["step"]),
                "train_loss": record["sums"]["loss"] / n,
                "seconds": record["sums"]["seconds"],
                "samples_per_s": n / record["sums"]["seconds"]
                if record["sums"]["seconds"]
                else 0.0,
            }
            if val_arrays is not None:
                vl, va = _evaluate(
                    module,
                    params,
                    val_arrays,
                    n_val,
                    s.batch_size,
                    (loss_name, logits, labels),
                )
                row["val_loss"] = vl
                if va is not None:
                    row["val_accuracy"] = va
            _, grads = module.value_and_grad(**probe_batch, **params)
            for p in module.PARAMS:
                row[f"grad_norm/{p}"] = float(np.linalg.norm(np.ravel(grads[p])))
            record["history"].append(row)
            record["epoch"], record["batch"] = epoch + 1, 0
            record["sums"] = {"loss": 0.0, "seconds": 0.0}
            save()
            write_history(out, record["history"])
            shown = ", ".join(
                f"{k} {v:.4f}"
                for k, v in row.items()
                if k in ("train_loss", "val_loss", "val_accuracy")
            )
            log(
                f"epoch {epoch + 1}/{s.epochs}: {shown}, "
                f"{row['samples_per_s']:,.0f} samples/s"
            )
    write_curves(out, record["history"])
    if test is not None:
        test_arrays, n_test = data_mod.load(test, probe, classes)
        tl, ta = _evaluate(
            module,
            params,
            test_arrays,
            n_test,
            s.batch_size,
            (loss_name, logits, labels),
        )
        record["test"] = {"loss": tl, "accuracy": ta}
        shown = f"test_loss {tl:.4f}" + (
            "" if ta is None else f", test_accuracy {ta:.4f}"
        )
        log(f"{os.fspath(test)}: {shown}")
        tmp = f"{record_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, record_path)
    log(f"wrote {ckpt}, {os.path.join(out, HISTORY)}, {os.path.join(out, CURVES)}")
    return record


class _Tables:
    """The INPUTS and DTYPES tables a module of ``A`` has, without compiling it."""

    def __init__(self, A):
        inputs = [
            n
            for n in g.schedule(A)
            if A.nodes[n].get(g.KIND) == g.INPUT
            and n not in (A.graph.get("cotangents") or {}).values()
        ]
        self.INPUTS = {n: tuple(A.nodes[n][g.SHAPE]) for n in inputs}
        self.DTYPES = {n: A.nodes[n][g.DTYPE] for n in inputs}


def write_history(out, history):
    """``history.csv``: one row per epoch (columns: every key any row has, in order)."""
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    path = os.path.join(out, HISTORY)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in keys})


def write_curves(out, history):
    """``curves.png``: train/val loss, val accuracy, and each parameter's gradient norm
    per epoch on a log scale (the vanishing/exploding-gradient picture)."""
    matplotlib = _need("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if any("val_loss" in r for r in history):
        ax.plot(epochs, [r.get("val_loss", np.nan) for r in history], "s-", label="val")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    ax = axes[1]
    if any("val_accuracy" in r for r in history):
        ax.plot(epochs, [r.get("val_accuracy", np.nan) for r in history], "s-")
        ax.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    else:
        ax.set_title("no accuracy (not a classification loss)")
    ax = axes[2]
    names = [k for k in history[0] if k.startswith("grad_norm/")]
    for k in names:
        values = [max(r[k], 1e-300) for r in history]
        ax.plot(epochs, values, ".-", label=k.split("/", 1)[1])
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="‖∂loss/∂p‖", title="gradient norm per parameter")
    ax.legend(fontsize="small")
    fig.savefig(os.path.join(out, CURVES), dpi=100)
    plt.close(fig)
