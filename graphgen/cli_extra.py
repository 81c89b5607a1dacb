"""The ``render`` and ``explain`` subcommands, registered into ``graphgen.cli.COMMANDS``."""

from __future__ import annotations

import os
import sys

from . import cli


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

    G = cli._load(args.spec)
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

    G = cli._load(args.spec)
    values = args.values
    if isinstance(values, str):
        values = os.fspath(values)
    sys.stdout.write(
        explain(G, args.wrt, format=args.format, values=values, seed=args.seed)
    )
    return 0


cli.COMMANDS.setdefault(
    "render",
    ("draw the forward, adjoint or gradient-flow graph", render_args, render_run),
)
cli.COMMANDS.setdefault(
    "explain", ("explain one gradient with the chain rule", explain_args, explain_run)
)
