"""The ``graphgen`` command line.

Every user-facing failure is a :class:`~graphgen.errors.GraphgenError`; ``main`` turns it
into one line ``graphgen: error: FILE: node 'a1': ...`` and exit status 2. Gradient-check
failures exit 1. Every subcommand is one entry of ``COMMANDS``: its help text, the function
that adds its arguments and the one that runs it. The modules a subcommand needs are
imported when it runs, so that ``graphgen --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from .errors import GraphgenError, GraphgenWarning
from .version import __version__


def _load(path, args=None):
    from .api import load

    if os.fspath(path).endswith(".onnx"):
        return load(path, **_onnx_options(args))
    if args is not None and (args.loss or args.freeze):
        raise GraphgenError("--loss, --labels and --freeze apply to ONNX models only")
    return load(path)


def _onnx_options(args):
    if args is None:
        return {}
    return {"loss": args.loss, "labels": args.labels, "freeze": tuple(args.freeze)}


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
        metavar="NAME",
        help="initializers to make constants instead of params",
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
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines (shown on a terminal when a compile takes over 2 s)",
    )
    onnx_args(p)


def compile_run(args):
    import contextlib

    from .api import Progress, observing

    progress = Progress() if not args.quiet else contextlib.nullcontext()
    with progress, observing(progress if not args.quiet else None):
        return _compile_run(args)


def _compile_run(args):
    from .api import generate, report, stored_arrays, write

    G = _load(args.spec, args)
    if args.report:
        sizes = {}
        for item in args.size:
            key, _, value = item.partition("=")
            if not value.isdigit():
                raise GraphgenError(f"--size expects NAME=N, got {item!r}")
            sizes[key] = int(value)
        print(
            report(G, backend=args.backend, dtype=args.dtype, sizes=sizes),
            file=sys.stderr,
        )
    name = os.path.basename(args.spec)
    options = {k: True for k in ("parallel", "fastmath") if getattr(args, k)}
    if options and args.backend != "numba":
        raise GraphgenError(f"--{' --'.join(options)} need --backend numba")
    if args.output:
        written = write(
            G, args.output, backend=args.backend, dtype=args.dtype, **options
        )
        print(f"wrote {', '.join(written)}", file=sys.stderr)
        return 0
    if stored_arrays(G):
        raise GraphgenError(
            "this model's weights are stored beside its module: give -o FILE.py"
        )
    text = generate(
        G, backend=args.backend, dtype=args.dtype, source_name=name, **options
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
    data, weights = to_spec(args.model, **_onnx_options(args))
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
    onnx_args(p)


def check_run(args):
    from .check import check

    report = check(
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
        "| op | arguments | attributes (default) | computes | local derivative / VJP |",
        "|---|---|---|---|---|",
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
    return 0


# ------------------------------------------------------------------------ render


def render_args(p):
    p.add_argument("spec", help="the spec file")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="where to write the diagram: .svg, .png, .pdf or .dot",
    )
    p.add_argument(
        "--view",
        choices=["forward", "adjoint", "flow"],
        default="flow",
        help="what to draw (default: flow, the forward graph with the gradient edges)",
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
        help="group nodes by 'group' attribute or name prefix (layer3/...): "
        "one box per group (groups, the default) or boxes around them "
        "(clusters)",
    )
    p.add_argument(
        "--focus", metavar="NODE", help="draw only the neighbourhood of NODE"
    )
    p.add_argument(
        "--depth", type=int, default=2, help="hops around --focus to draw (default 2)"
    )


def render_run(args):
    from .views.diagram import write

    G = _load(args.spec)
    write(
        G,
        args.output,
        view=args.view,
        values=args.values,
        seed=args.seed,
        collapse=args.collapse or False,
        focus=args.focus,
        depth=args.depth,
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


def explain_run(args):
    from .views.explain import explain

    G = _load(args.spec)
    values = args.values
    if isinstance(values, str):
        values = os.fspath(values)
    sys.stdout.write(
        explain(G, args.wrt, format=args.format, values=values, seed=args.seed)
    )
    return 0


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GraphgenWarning)
        try:
            status = COMMANDS[args.command][2](args)
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
