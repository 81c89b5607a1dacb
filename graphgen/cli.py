"""The ``graphgen`` command line.

Every user-facing failure is a :class:`~graphgen.errors.GraphgenError`; ``main`` turns it
into one line ``graphgen: error: FILE: node 'a1': ...`` and exit status 2. Gradient-check
failures exit 1. Every subcommand is one entry of ``COMMANDS``: its help text, the function
that adds its arguments and the one that runs it. The modules a subcommand needs are
imported when it runs, so that ``graphgen --help`` stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import warnings

from .errors import GraphgenError, GraphgenWarning
from .version import __version__


def _load(path, args=None):
    from .api import load

    if os.fspath(path).endswith(".onnx"):
        return load(path, **_onnx_options(args))
    if args is not None and (args.loss or args.freeze or args.trainable or args.shape):
        raise GraphgenError(
            "--loss, --labels, --freeze, --trainable and --shape apply to ONNX models only"
        )
    return load(path)


def _onnx_options(args):
    if args is None:
        return {}
    shapes = {}
    for item in args.shape:
        name, _, sizes = item.rpartition("=")
        parts = sizes.split("x") if sizes else []
        if not name or not all(p.isdigit() for p in parts):
            raise GraphgenError(
                f"--shape expects NAME=2x8 (sizes joined by x), got {item!r}"
            )
        shapes[name] = [int(p) for p in parts]
    return {
        "loss": args.loss,
        "labels": args.labels,
        "freeze": tuple(args.freeze),
        "trainable": tuple(args.trainable),
        **({"shapes": shapes} if shapes else {}),
    }


def onnx_args(p):
    g = p.add_argument_group("ONNX models")
    g.add_argument(
        "--loss",
        choices=["softmax_cross_entropy", "mse"],
        help="append this loss on the model's output (value_and_grad then exists)",
    )
    g.add_argument(
        "--labels", metavar="NAME", help="name of the loss's target input (with --loss)"
    )
    g.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="initializers (names or globs, e.g. 'encoder.*') to keep constant",
    )
    g.add_argument(
        "--trainable",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="initializers (names or globs) to make params even where graphgen would "
        "keep them constant (0-d ones, ones no gradient reaches)",
    )
    g.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=2x8",
        help="give input NAME this static shape: shape arithmetic on its symbolic sizes "
        "then folds at compile time",
    )


# ----------------------------------------------------------------------- compile


def compile_args(p):
    p.add_argument("spec", help="the spec file (.yaml, .yml, .json) or an ONNX model")
    p.add_argument(
        "-o",
        "--output",
        help="where to write the module (default: stdout); a model with stored "
        "weights also gets OUTPUT's name with .npz beside it",
    )
    p.add_argument("--backend", default="numpy", help="code generator (default: numpy)")
    p.add_argument(
        "--dtype", choices=["float32", "float64"], help="override the spec's dtype"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="print op counts per pass, the arrays saved for the backward pass "
        "and the planned peak memory to stderr",
    )
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=N",
        help="a symbolic size for --report (default 32 each), e.g. batch=512",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="numba backend: split the outer loop of each kernel over threads",
    )
    p.add_argument(
        "--fastmath",
        action="store_true",
        help="numba backend: compile kernels with fastmath=True",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="numba backend: each function as one compiled function whenever its ops "
        "allow it, transformers' ops included (first call ~5x longer to compile)",
    )
    forward_mode_args(p)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines (shown on a terminal when a compile takes over 2 s)",
    )
    onnx_args(p)
    optimizer_args(p)


def optimizer_args(p):
    """``--optimizer`` and its settings (PyTorch's names and defaults)."""
    g = p.add_argument_group(
        "training step (init_state, train_step, save_checkpoint, load_checkpoint)"
    )
    g.add_argument(
        "--optimizer",
        choices=["sgd", "momentum", "adam", "adamw"],
        help="add train_step with this optimizer (torch.optim's formulas)",
    )
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, help="momentum (default 0.9)")
    g.add_argument("--betas", metavar="B1,B2", help="Adam's betas (default 0.9,0.999)")
    g.add_argument("--eps", type=float, help="Adam's epsilon (default 1e-8)")
    g.add_argument(
        "--weight-decay",
        type=float,
        help="weight decay (default 0; adamw 1e-2)",
    )
    g.add_argument(
        "--clip-norm",
        type=float,
        help="clip the global gradient norm to this (torch's clip_grad_norm_)",
    )
    g.add_argument(
        "--schedule",
        choices=["constant", "cosine", "warmup-cosine"],
        help="learning-rate schedule (default constant; the others need --steps)",
    )
    g.add_argument("--steps", type=int, help="steps of the cosine schedules")
    g.add_argument(
        "--warmup", type=int, help="warmup steps of warmup-cosine (default steps/10)"
    )


OPTIMIZER_SETTINGS = (
    "lr",
    "momentum",
    "betas",
    "eps",
    "weight_decay",
    "clip_norm",
    "schedule",
    "steps",
    "warmup",
)


def _optimizer_settings(args):
    """The optimizer flags as given, by setting name (None where not given)."""
    return {k: getattr(args, k, None) for k in OPTIMIZER_SETTINGS}


def optimizer_from(args):
    """The optimizer the arguments ask for (None: no train_step)."""
    from .codegen.optim import optimizer

    settings = _optimizer_settings(args)
    if args.optimizer is None:
        given = [k for k, v in settings.items() if v is not None]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            verb = "needs" if len(given) == 1 else "need"
            raise GraphgenError(f"{flags} {verb} --optimizer")
        return None
    return optimizer(args.optimizer, **settings)


def forward_mode_args(p):
    f = p.add_argument_group("forward mode and second order")
    f.add_argument(
        "--jvp",
        action="store_true",
        help="add jvp(tangents, **arrays) -> (outputs, output tangents)",
    )
    f.add_argument(
        "--hvp",
        action="store_true",
        help="add hvp(vectors, **arrays) -> (loss, grads, Hessian-vector products)",
    )
    f.add_argument(
        "--hessian",
        action="store_true",
        help="add hessian(**arrays), the full Hessian of the loss in the WRT arrays "
        "(small models; implies --hvp)",
    )


def compile_run(args):
    import contextlib

    from .api import Progress, observing

    progress = Progress() if not args.quiet else contextlib.nullcontext()
    with progress, observing(progress if not args.quiet else None):
        return _compile_run(args)


def _compile_run(args):
    from .api import generate, report, stored_arrays, write

    G = _load(args.spec, args)
    opt = optimizer_from(args)
    if args.report:
        sizes = {}
        for item in args.size:
            key, _, value = item.partition("=")
            if not value.isdigit():
                raise GraphgenError(f"--size expects NAME=N, got {item!r}")
            sizes[key] = int(value)
        forward = {k: True for k in ("jvp", "hvp", "hessian") if getattr(args, k)}
        print(
            report(
                G,
                backend=args.backend,
                dtype=args.dtype,
                sizes=sizes,
                optimizer=opt,
                **forward,
            ),
            file=sys.stderr,
        )
    name = os.path.basename(args.spec)
    options = {k: True for k in ("parallel", "fastmath", "whole") if getattr(args, k)}
    if options and args.backend != "numba":
        raise GraphgenError(f"--{' --'.join(options)} need --backend numba")
    options.update({k: True for k in ("jvp", "hvp", "hessian") if getattr(args, k)})
    if args.output:
        written = write(
            G,
            args.output,
            backend=args.backend,
            dtype=args.dtype,
            optimizer=opt,
            **options,
        )
        print(f"wrote {', '.join(written)}", file=sys.stderr)
        return 0
    if stored_arrays(G):
        raise GraphgenError(
            "this model's weights are stored beside its module: give -o FILE.py"
        )
    text = generate(
        G,
        backend=args.backend,
        dtype=args.dtype,
        source_name=name,
        optimizer=opt,
        **options,
    )
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------ import


def _yaml_spec(data, yaml):
    """A spec as YAML the way examples/ write them: one line per input, param and node."""

    def flow(v):
        text = yaml.safe_dump(
            v, default_flow_style=True, width=1 << 30, sort_keys=False
        )
        return text.strip().removesuffix("...").strip()

    out = []
    for key, value in data.items():
        if key in ("inputs", "params", "nodes") and isinstance(value, dict):
            out.append(f"{key}:")
            out.extend(
                f"  {flow(name)}: {flow(entry)}" for name, entry in value.items()
            )
        else:
            out.append(f"{key}: {flow(value)}")
    return "\n".join(out) + "\n"


def _import_summary(info):
    """What ``graphgen import`` says about a model: how many nodes it folded, which
    float initializers became params, which constants, and why, and which params hold
    one value (copies of one PyTorch parameter)."""
    from .frontends.shared import describe

    lines = [f"folded {info['folded']} node(s) whose inputs are all known"]
    by = {}
    for name, (kind, why) in info["initializers"].items():
        by.setdefault((kind, why), []).append(name)
    for (kind, why), names in sorted(by.items()):
        shown = ", ".join(names[:8]) + (
            f", ... ({len(names)} in all)" * (len(names) > 8)
        )
        lines.append(f"{kind}s ({why}): {shown}")
    return lines + describe(info["shared"])


def import_args(p):
    p.add_argument("model", help="the ONNX model (.onnx)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="the spec to write (.yaml or .json); the weights go beside it as .npz",
    )
    onnx_args(p)


def import_run(args):
    import json

    import numpy as np
    import yaml

    from .frontends.onnx import to_spec

    if not args.model.endswith(".onnx"):
        raise GraphgenError(f"{args.model}: expected an ONNX model (.onnx)")
    info = {}
    data, weights = to_spec(args.model, info=info, **_onnx_options(args))
    for line in _import_summary(info):
        print(line, file=sys.stderr)
    stem = os.path.splitext(args.output)[0]
    written = [args.output]
    if weights:
        data["weights"] = os.path.basename(stem) + ".npz"
        np.savez(stem + ".npz", **weights)
        written.append(stem + ".npz")
    with open(args.output, "w", encoding="utf-8") as f:
        if args.output.endswith(".json"):
            json.dump(data, f, indent=1)
            f.write("\n")
        else:
            f.write(f"# Imported from {os.path.basename(args.model)} by graphgen.\n")
            f.write(_yaml_spec(data, yaml))
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- check


def check_args(p):
    p.add_argument("spec", help="the spec file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random arrays")
    p.add_argument(
        "--tol", type=float, default=1e-6, help="relative tolerance (default 1e-6)"
    )
    p.add_argument(
        "--max-elements",
        type=int,
        default=64,
        help="entries checked per array at most (default 64)",
    )
    p.add_argument(
        "--order",
        type=int,
        choices=[1, 2],
        default=1,
        help="1: gradients (default); 2: the generated jvp against differences of "
        "the outputs and hvp against differences of the gradient",
    )
    onnx_args(p)


def check_run(args):
    from .check import check, check_second_order

    report = (check_second_order if args.order == 2 else check)(
        _load(args.spec, args),
        seed=args.seed,
        tol=args.tol,
        max_elements=args.max_elements,
    )
    print(report.format())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- ops


def ops_args(p):
    p.add_argument(
        "--all", action="store_true", help="also list the internal ops VJP rules use"
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print a Markdown table (the one in the README)",
    )


def ops_markdown(rows):
    from . import ops

    lines = [
        "| op | arguments | attributes (default) | computes "
        + "| local derivative / VJP | JVP |",
        "|---|---|---|---|---|---|",
    ]
    for op in sorted(rows, key=lambda o: (o.category, o.name)):
        attrs = ", ".join(
            f"{k}{'' if v is ops.REQUIRED else f' ({v!r})'}"
            for k, v in op.attrs.items()
        )
        sig = ", ".join(op.args) + ("…" if op.variadic else "")
        derivs = "; ".join(ops.plain(op, d) for d in op.derivs)
        cells = [
            f"`{op.name}`",
            sig,
            attrs or "–",
            ops.plain(op, op.math),
            derivs or "–",
            op.jvp_text,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def ops_run(args):
    from . import ops

    rows = [op for op in ops.REGISTRY.values() if args.all or not op.internal]
    if args.markdown:
        print(ops_markdown(rows))
        return 0
    width = max(len(op.name) for op in rows)
    category = None
    for op in sorted(rows, key=lambda o: (o.category, o.name)):
        if op.category != category:
            category = op.category
            print(f"\n{category}:")
        math = ops.plain(op, op.math)
        attrs = ", ".join(
            f"{k}=(required)" if v is ops.REQUIRED else f"{k}={v!r}"
            for k, v in op.attrs.items()
        )
        sig = ", ".join(op.args) + ("..." if op.variadic else "")
        print(
            f"  {op.name:<{width}}  {op.name}({sig})  {math}"
            + (f"  [{attrs}]" if attrs else "")
        )
        derivs = "; ".join(ops.plain(op, d) for d in op.derivs)
        pad = " " * (width + 4)
        if derivs:
            print(f"{pad}VJP: {derivs}")
        print(f"{pad}JVP: {op.jvp_text}")
    return 0


# ------------------------------------------------------------------------ render


def render_args(p):
    p.add_argument("spec", help="the spec file")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="where to write the diagram: .svg, .png, .pdf or .dot; or .html, an "
        "interactive page that steps through backprop (with values for random arrays)",
    )
    p.add_argument(
        "--view",
        choices=["forward", "adjoint", "flow", "tangent"],
        default="flow",
        help="what to draw (default: flow, the forward graph with the gradient edges; "
        "tangent: forward mode, each tangent the sum over its arguments)",
    )
    p.add_argument(
        "--values",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE.npz",
        help="annotate with value and gradient norms for random arrays, or "
        "the arrays in FILE.npz",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random arrays")
    p.add_argument(
        "--collapse",
        nargs="?",
        const="groups",
        default=None,
        choices=["groups", "clusters"],
        help="draw by block ('group' attribute, name prefix such as layer3/..., "
        "layer number such as m7, else repeated structure): one box per block "
        "(groups, the default) or boxes around them (clusters); a drawing too big "
        "for Graphviz is collapsed without asking",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="draw every node even when the drawing is big (a warning says so)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="stop Graphviz's dot after this long and say what to do instead "
        "(default 20; 0: no limit)",
    )
    p.add_argument(
        "--focus", metavar="NODE", help="draw only the neighbourhood of NODE"
    )
    p.add_argument(
        "--depth", type=int, default=2, help="hops around --focus to draw (default 2)"
    )
    onnx_args(p)


def render_run(args):
    from .views.diagram import write

    G = _load(args.spec, args)
    if args.timeout < 0:
        raise GraphgenError(
            "--timeout: expected a number of seconds >= 0 (0: no limit)"
        )
    if args.output.lower().endswith(".html"):
        from .views import page

        if args.collapse or args.focus or args.view != "flow":
            raise GraphgenError(
                "--view, --collapse and --focus apply to diagrams, not to the .html "
                "page (it collapses big graphs into blocks by itself)"
            )
        page.write(G, args.output, values=args.values or True, seed=args.seed)
        print(f"wrote {args.output}", file=sys.stderr)
        return 0
    write(
        G,
        args.output,
        view=args.view,
        values=args.values,
        seed=args.seed,
        collapse=args.collapse,
        focus=args.focus,
        depth=args.depth,
        full=args.full,
        timeout=args.timeout,
        progress=lambda text: print(f"graphgen: {text}", file=sys.stderr, flush=True),
    )
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------- explain


def explain_args(p):
    p.add_argument("spec", help="the spec file")
    p.add_argument(
        "--wrt",
        required=True,
        metavar="NAME",
        help="the node to explain the gradient of (e.g. W1, or W1[0,1] "
        "for one element, 0-based)",
    )
    p.add_argument("--format", choices=["text", "markdown", "latex"], default="text")
    p.add_argument(
        "--values",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE.npz",
        help="add numbers for random arrays (or FILE.npz) and check them "
        "against the generated value_and_grad",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random arrays")
    p.add_argument(
        "--mode",
        choices=["reverse", "forward"],
        default="reverse",
        help="forward: forward accumulation (the sum over predecessors) beside the "
        "reverse sum over successors",
    )
    onnx_args(p)


def explain_run(args):
    from .views.explain import explain

    G = _load(args.spec, args)
    values = args.values
    if isinstance(values, str):
        values = os.fspath(values)
    text = explain(
        G,
        args.wrt,
        format=args.format,
        values=values,
        seed=args.seed,
        mode=args.mode,
    )
    sys.stdout.write(text)
    if text.mismatches:
        print(
            f"graphgen: error: {text.mismatches} of the numbers above disagree with "
            "the generated value_and_grad (marked MISMATCH)",
            file=sys.stderr,
        )
        return 1
    return 0


# ------------------------------------------------------------ distributed-check


def dask_args(p, required=False):
    """``--dask ADDRESS``: the cluster a command runs its gradients on (any command that
    takes it opens it with ``graphgen.distributed.connect(args.dask)``)."""
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        required=required,
        help="a Dask scheduler's address (tcp://host:8786), or local:N for a "
        "LocalCluster of N worker processes on this machine",
    )


def distributed_check_args(p):
    p.add_argument("spec", help="the spec file or an ONNX model")
    dask_args(p, required=True)
    p.add_argument("--backend", default="numpy", help="code generator (default: numpy)")
    p.add_argument(
        "--dtype", choices=["float32", "float64"], help="override the spec's dtype"
    )
    p.add_argument(
        "--batch", type=int, default=64, help="examples in the batch (default 64)"
    )
    p.add_argument(
        "--shards",
        type=int,
        help="pieces the batch is split into (default: 2 per worker)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random arrays")
    onnx_args(p)


def distributed_check_run(args):
    import time

    import numpy as np

    from . import distributed as gd
    from .api import compile
    from .check import random_arrays

    G = _load(args.spec, args)
    module = compile(G, backend=args.backend, dtype=args.dtype)
    if not hasattr(module, "value_and_grad"):
        raise GraphgenError(f"{args.spec}: the graph has no loss to differentiate")
    if args.batch < 1 or (args.shards is not None and args.shards < 1):
        raise GraphgenError("--batch and --shards must be at least 1")
    axis = gd.batch_axis(module)
    arrays = random_arrays(
        G, seed=args.seed, sizes={axis: args.batch}, dtype=args.dtype
    )
    batch = {k: arrays[k] for k in module.INPUTS}
    params = {k: arrays[k] for k in module.PARAMS}
    want_loss, want = module.value_and_grad(**batch, **params)
    with gd.connect(args.dask) as client:
        workers = sorted(client.scheduler_info()["workers"])
        count = min(args.shards or 2 * len(workers), args.batch)
        shards = gd.split(batch, count, module.INPUTS)
        print(
            f"graphgen distributed-check: {os.path.basename(args.spec)}, "
            f"{args.backend} backend, {args.batch} examples in {count} shards, "
            f"{len(workers)} worker{'s' if len(workers) != 1 else ''} at "
            f"{client.scheduler.address}"
        )
        seen = []
        for k in range(1, len(workers) + 1):
            start = time.perf_counter()
            loss, grads = gd.value_and_grad(
                module, client, shards, params, workers=workers[:k]
            )
            took = time.perf_counter() - start
            print(f"  {k} worker{'s' if k > 1 else ' '}: loss {loss!r}  {took:.3f} s")
            seen.append(
                (
                    np.float64(loss).tobytes(),
                    [grads[n].tobytes() for n in sorted(grads)],
                )
            )
    same = all(s == seen[0] for s in seen)
    print(f"same bytes for 1 to {len(workers)} workers: {'yes' if same else 'NO'}")
    worst = abs(loss - want_loss) / max(abs(want_loss), np.finfo(float).tiny)
    for n, w in want.items():
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        diff = float(np.max(np.abs(grads[n] - w))) if w.size else 0.0
        worst = max(worst, diff / scale if scale else diff)
    tol = 1e-12 if np.dtype(module.DTYPE) == np.float64 else 1e-5
    print(f"one process: loss {want_loss!r}")
    print(f"max relative difference from one process: {worst:.3g} (tolerance {tol:g})")
    if worst > tol:
        print(
            "the shards' weighted sum is not the whole batch's gradient: is the loss a "
            "mean over the batch (not a sum, no batch statistics)?"
        )
    return 0 if same and worst <= tol else 1


# ------------------------------------------------------------------------- train


def train_args(p):
    p.add_argument("spec", nargs="?", help="the spec file (not with --resume)")
    p.add_argument("--data", help="the training arrays (.npz, one per input)")
    p.add_argument("--val", help="validation arrays (.npz), evaluated each epoch")
    p.add_argument("--test", help="test arrays (.npz), evaluated once at the end")
    p.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--backend", default="numpy", help="code generator (default numpy)")
    p.add_argument("--seed", type=int, default=0, help="init and shuffling seed")
    p.add_argument("-o", "--output", metavar="RUN_DIR", help="where the run goes")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR where it stopped",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    dask_args(p)
    optimizer_args(p)
    p.set_defaults(optimizer="adam")


def train_run(args):
    from .training import train

    if args.resume:
        if args.spec or args.data or args.output not in (None, args.resume):
            raise GraphgenError("--resume RUN_DIR takes the run's own spec and data")
        record = train(
            None,
            None,
            out=args.resume,
            resume=True,
            test=args.test,
            progress=not args.no_progress,
            dask=args.dask,
        )
    else:
        if not args.spec or not args.data or not args.output:
            raise GraphgenError("graphgen train needs SPEC, --data and -o RUN_DIR")
        settings = {k: v for k, v in _optimizer_settings(args).items() if v is not None}
        record = train(
            args.spec,
            args.data,
            out=args.output,
            val=args.val,
            test=args.test,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer={"name": args.optimizer, **settings},
            backend=args.backend,
            seed=args.seed,
            progress=not args.no_progress,
            dask=args.dask,
        )
    return 130 if record.get("interrupted") else 0


COMMANDS = {
    "compile": (
        "turn a spec into a standalone Python module",
        compile_args,
        compile_run,
    ),
    "check": (
        "compare gradients with central finite differences",
        check_args,
        check_run,
    ),
    "import": (
        "turn an ONNX model into a spec file (and its weights)",
        import_args,
        import_run,
    ),
    "ops": ("list every op with its math", ops_args, ops_run),
    "render": (
        "draw the forward, adjoint or gradient-flow graph",
        render_args,
        render_run,
    ),
    "explain": (
        "explain one gradient with the chain rule",
        explain_args,
        explain_run,
    ),
    "distributed-check": (
        "compare a gradient on a Dask cluster with one process",
        distributed_check_args,
        distributed_check_run,
    ),
    "train": (
        "train a spec on .npz arrays with a generated train_step",
        train_args,
        train_run,
    ),
}


def parser():
    p = argparse.ArgumentParser(
        prog="graphgen",
        description="Compile NetworkX dataflow graphs into standalone NumPy gradient code.",
    )
    p.add_argument("--version", action="version", version=f"graphgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if not args.command:
        p.print_help()
        return 2
    with warnings.catch_warnings(record=True) as caught, _terminate_as_interrupt():
        warnings.simplefilter("always", GraphgenWarning)
        try:
            status = COMMANDS[args.command][2](args)
        except (KeyboardInterrupt, Terminated) as e:
            # whatever ran (Graphviz's dot) has been stopped by the code that started it
            _flush(caught)
            print("graphgen: stopped", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        except GraphgenError as e:
            _flush(caught)
            print(_one_line(f"graphgen: error: {e}"), file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
        except Exception as e:  # a bug in graphgen: one line, the traceback on request
            if os.environ.get("GRAPHGEN_DEBUG"):
                raise
            _flush(caught)
            print(
                _one_line(
                    f"graphgen: internal error: {type(e).__name__}: {e} (this is a bug "
                    "in graphgen; set GRAPHGEN_DEBUG=1 for the traceback)"
                ),
                file=sys.stderr,
            )
            return 3
    _flush(caught)
    return status


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so that ``finally`` blocks stop children."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only)."""

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# the characters of one word (a name, a size expression) that an error line shows
LONG_WORD = 200


def _one_line(text):
    """A message as one line: line breaks become spaces, and a word longer than
    ``LONG_WORD`` (a megabyte name) keeps its start and end around a count of what is
    left out."""

    def cut(m):
        w, half = m.group(), LONG_WORD // 2
        return f"{w[:half]}...[{len(w) - 2 * half} characters]...{w[-half:]}"

    text = " ".join(text.splitlines())
    return re.sub(rf"\S{{{LONG_WORD + 1},}}", cut, text)


def _flush(caught):
    for w in caught:
        if issubclass(w.category, GraphgenWarning):
            print(_one_line(f"graphgen: warning: {w.message}"), file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


if __name__ == "__main__":
    sys.exit(main())
