"""The core of the op registry: :class:`Op`, the registry itself and the helpers the op
families (``defs``, ``conv``, ``data``, ``nn``) build their declarations with.

The families import from here, never from the package: ``graphgen.ops`` imports the
families, so importing back from it would be a circle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .. import dims
from ..errors import GraphError, ShapeError

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Op:
    """The declaration of one op.

    Attributes
    ----------
    name : str
        The name used in specs (``op: sigmoid``).
    args : tuple of str
        Argument names, used in math text and errors; ``("xs",)`` with ``variadic``.
    shape : callable
        ``shape(in_shapes, attrs) -> out_shape``; raises :class:`ShapeError`.
    impl : callable
        ``impl(*arrays, **attrs) -> ndarray``, the NumPy reference semantics.
    vjp : callable or None
        ``vjp(b, ctx) -> list`` of cotangent nodes, one per argument (None: no gradient).
    jvp : callable or None
        ``jvp(b, ctx) -> list`` of tangent contributions, one per argument (for a variadic
        op, one per argument it was given): ``∂y/∂arg_i · arg_i``'s tangent, or None where
        the argument has no tangent (``ctx.dots[i] is None``) or ``y`` does not depend on
        it. ``ctx`` is a :class:`JVPContext`; like a VJP rule it builds registered ops
        through ``b``. A contribution may be smaller than the output if it broadcasts to
        it: the forward-mode pass (:mod:`graphgen.passes.forward`) broadcasts it, the
        dual of the ``sum_to_shape`` the adjoint pass adds. A linear op's rule is often
        the op itself applied to the tangent (:func:`same_op`); an op whose Jacobian is
        symmetric (elementwise unary: diagonal) can reuse its VJP (:func:`symmetric`).
    jvp_reason : str
        Why the op has no JVP rule (it takes no arguments, or only int64 labels), or why
        its rule sends no tangent (a mask: its derivative is 0 wherever it is defined).
    math : str
        The forward math, with ``{y}`` for the output and argument names in braces.
    derivs : tuple of str
        Per argument, the local derivative (or the VJP it applies) in the same notation.
    attrs : dict
        Attribute name -> default (``REQUIRED`` when it has none).
    normalize : callable, optional
        ``normalize(in_shapes, attrs) -> attrs`` run before ``shape`` (resolves defaults
        that depend on rank, negative axes, ...).
    variadic : bool
        Takes one or more arguments.
    int_args : tuple of int
        Argument positions that take int64 labels (never differentiated).
    domain : tuple of str
        Per argument, where finite-difference tests sample it: ``"real"``, ``"positive"``,
        ``"unit"`` (0..1), ``"labels"``, ``"mask"`` (0 or 1) or ``"away0"`` (|x| >= 0.1,
        for kinks at 0).
    elementwise : bool
        Broadcasting elementwise op (fusable by the Numba backend).
    internal : bool
        Introduced by VJP rules; usable in specs but not part of the documented vocabulary.

    The facts below are what passes, backends and views ask about an op; each is declared
    here, on the op, and nowhere else.

    commutative : bool
        ``f(a, b) == f(b, a)`` (for a variadic op: any order of its arguments). The
        optimizer's common-subexpression pass and the diagrams sort such arguments.
    linear : bool
        Linear in each argument together (``add``, ``sub``, ``neg``, ``add_n``): explain
        walks through such ops to find the pre-activation of a hidden unit.
    activation : bool
        An elementwise nonlinearity (a unit's activation, in the textbook sense).
    transcendental : bool
        Calls exp, log, tanh, sin, ... per element: the Numba backend weighs NumPy's SIMD
        loops against its own loops for these.
    mask : bool
        A 0/1 comparison mask (``step``, ``ge``, ``lt``, ``eq``): a backend may keep it
        boolean where a product consumes it.
    view : bool
        NumPy's result may share memory with its argument (or be read-only).
    ufunc : tuple
        ``(function, arg, ...)`` when one NumPy ufunc call computes the op, so that it can
        write into an existing buffer (``out=``): each ``arg`` is an argument name or a
        literal, e.g. ``("np.maximum", "x", "0.0")`` for ``relu``.
    reads_as_code : bool
        Its code already reads as its math (``a + b``, ``h @ W``): no comment above it.
    folds : bool or callable
        Constant folding may evaluate it (with ``impl``) where its result is a scalar and
        every argument a constant; a callable ``folds(attrs) -> bool`` decides per node.
    broadcasts : bool
        Its result is its argument broadcast to a larger shape (``broadcast_to``): an
        elementwise consumer may read the argument instead and broadcast it itself.
    identities : tuple of callables
        The algebraic identities the optimizer applies, first match wins: each
        ``rule(site)`` returns the node this one can be replaced by (``x·1 -> x``), or
        None. ``site`` shows the node: ``op``, ``args``, ``attrs``; ``same(p)`` (node
        ``p`` has this node's shape), ``const(p)`` (``p``'s value if it is a constant,
        else None), ``op_of(p)`` and ``args_of(p)``. :func:`unit`, :func:`involution`,
        :func:`lone_argument` and :func:`same_shape_no_op` make the common ones.
    sums : bool
        Adds its arguments up (``add_n``, the sum over successors): a backend may
        accumulate it into its first term's buffer.
    shares : str
        An op that this one computes on its arguments on the way (``mse(y, t)`` computes
        ``sub(y, t)``): where the backward pass builds that node anyway, a backend
        computes it once and the op reads it, through the macro ``<op>_from_<shares>``.
    kept : bool
        Its value is an array the module makes once and keeps (``constant``): never a
        buffer to write into.
    indices : callable, optional
        For an op whose int64 argument indexes an axis (class labels, gather indices):
        ``indices(in_shapes, attrs) -> (arg, size, wraps)``, the argument, the size of
        the axis it indexes, and whether a negative index counts from the end. The
        generated module refuses indices outside ``[0, size)`` (``[-size, size)`` when
        they wrap): NumPy would raise an IndexError deep inside, or read a negative label
        as a class; compiled code would read out of bounds. ``check`` samples below it.
    joins : str
        The op places its argument in zeros at a slice of one axis (``unslice``, the
        VJP of ``slice``), and this op (``concat``) puts such pieces side by side: a sum
        (an op with ``sums``) of pieces on adjacent slices that cover the axis is their
        ``joins`` (:func:`graphgen.passes.optimize.concat_slices`).
    splits : tuple
        ``(inner, outer, inner_args, outer_args)`` when the op equals
        ``outer(inner(args[i] for i in inner_args; same attributes), args[j] for j in
        outer_args)``: where the graph holds that ``inner`` node anyway (the op's VJP
        built it), :func:`graphgen.passes.optimize.reuse_inner` rewrites the op as
        ``outer`` on it, so the value is computed once and kept for the backward pass
        (fused attention: its probabilities).
    skips : callable, optional
        With ``indices``: ``skips(attrs) -> value or None``, an index value the op
        ignores (``ignore_index``), which the generated module's range check allows.
    math_when : tuple
        ``(predicate, text)`` pairs: on a node whose attributes satisfy
        ``predicate(attrs)``, the first such ``text`` replaces ``math`` in comments and
        explanations (``softmax_cross_entropy`` with an ``ignore_index`` says what it
        leaves out); :meth:`math_for` picks it.
    keeps_int : bool
        It only rearranges its first argument (``reshape``): given int64 indices, it
        gives int64 indices (no gradient flows through them).
    dtype : callable, optional
        The dtype rule of an op that makes int64: ``dtype(in_dtypes, attrs) -> "int64"
        or None`` (None: the graph's float dtype), from its arguments' dtypes and its
        attributes, defaults filled in (``range``: always int64; ``constant_of_shape``:
        int64 when its value is an integer; ``where``: int64 when both branches are).
        No gradient flows through an int64 value (nothing float depends on it but
        through ``int_to_float`` or a comparison, which have none). The registry test
        checks its values against ``impl`` exactly instead of finite differences.
    int_like : tuple of int
        With ``dtype``: the argument positions that are int64 exactly when the result
        is (``where``'s branches); the others are float, or int64 by ``int_args``.
    """

    name: str
    args: tuple
    shape: Callable
    impl: Callable
    vjp: Callable | None
    math: str
    derivs: tuple = ()
    attrs: dict = dataclasses.field(default_factory=dict)
    normalize: Callable | None = None
    variadic: bool = False
    int_args: tuple = ()
    domain: tuple = ()
    elementwise: bool = False
    internal: bool = False
    category: str = ""
    commutative: bool = False
    linear: bool = False
    activation: bool = False
    transcendental: bool = False
    mask: bool = False
    view: bool = False
    ufunc: tuple = ()
    reads_as_code: bool = False
    folds: bool | Callable = True
    broadcasts: bool = False
    identities: tuple = ()
    sums: bool = False
    shares: str = ""
    kept: bool = False
    indices: Callable | None = None
    keeps_int: bool = False
    jvp: Callable | None = None
    jvp_reason: str = ""
    math_when: tuple = ()
    skips: Callable | None = None
    joins: str = ""
    splits: tuple = ()
    dtype: Callable | None = None
    int_like: tuple = ()

    def math_for(self, attrs):
        """The math text of a node with these (inferred) attributes."""
        for predicate, text in self.math_when:
            if predicate(attrs):
                return text
        return self.math

    def arity_ok(self, n):
        return n >= 1 if self.variadic else n == len(self.args)

    def arg_name(self, i):
        return f"{self.args[0]}[{i}]" if self.variadic else self.args[i]

    def arg_domain(self, i):
        if not self.domain:
            return "real"
        return self.domain[0] if self.variadic else self.domain[i]

    @property
    def jvp_text(self):
        """How the op's JVP is obtained, for the op table (``graphgen ops``)."""
        if self.jvp is None:
            return f"none ({self.jvp_reason})" if self.jvp_reason else "none"
        return getattr(self.jvp, "how", "Σ over the arguments of ∂y/∂arg · d(arg)")

    def can_fold(self, attrs):
        """Whether constant folding may evaluate a node of this op with ``attrs``."""
        return self.folds(attrs) if callable(self.folds) else self.folds


REGISTRY: dict[str, Op] = {}

# NumPy helper functions a generated module defines when its code calls ``_<name>(``
# (templates/numpy/helpers/<name>.py.j2), each with the helpers it calls in turn.
# Insertion order is the order they appear in a module.
HELPERS: dict[str, tuple] = {
    "sigmoid": (),
    "logsumexp": (),
    "softmax": (),
    "log_softmax": ("logsumexp",),
    "softmax_cross_entropy": (),
    "softmax_xent_grad": (),
    "softmax_cross_entropy_ignore": (),
    "softmax_xent_grad_ignore": (),
    "sigmoid_cross_entropy": (),
    "onehot": (),
    "unslice": (),
}


def register(op: Op) -> Op:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} registered twice")
    REGISTRY[op.name] = op
    return op


def get(name) -> Op:
    return REGISTRY[name]


class MissingAttribute(GraphError):
    """:func:`infer` found no value for a required attribute (``attr``)."""

    def __init__(self, op, attr):
        super().__init__(f"op {op} needs attribute {attr!r}")
        self.op = op
        self.attr = attr


def infer(op: Op, in_shapes, attrs) -> tuple[dict, tuple]:
    """``(attrs, shape)`` of ``op`` applied to arguments of shapes ``in_shapes``.

    The one place an op's attributes are completed and its shape rule is run: ``attrs``
    as given, then each missing attribute's default (in declaration order), then what
    ``normalize`` resolves; ``shape`` is the shape rule's result on those.

    Raises :class:`GraphError` for an attribute the op does not declare,
    :class:`MissingAttribute` (a ``GraphError``) for a required one not given, and
    :class:`ShapeError` when the arguments do not fit. Callers add the node and file.
    """
    unknown = sorted(set(attrs) - set(op.attrs))
    if unknown:
        expected = ", ".join(op.attrs) or "none"
        raise GraphError(
            f"unknown attribute {unknown[0]!r} for op {op.name} (expected: {expected})"
        )
    full = dict(attrs)
    for k, default in op.attrs.items():
        if k not in full:
            if default is REQUIRED:
                raise MissingAttribute(op.name, k)
            full[k] = default
    if op.normalize is not None:
        full = {**full, **op.normalize(in_shapes, full)}
    return full, tuple(op.shape(in_shapes, full))


@dataclasses.dataclass
class VJPContext:
    """What a VJP rule sees of the node it differentiates.

    ``ins`` are the argument node ids, ``out`` the node itself, ``g`` the node holding the
    output's adjoint; shapes are the inferred (possibly symbolic) shapes.
    """

    ins: list
    out: str
    g: str
    attrs: dict
    in_shapes: list
    out_shape: tuple


@dataclasses.dataclass
class JVPContext:
    """What a JVP rule sees of the node it differentiates.

    ``ins`` are the argument node ids, ``out`` the node itself (its forward value, to
    reuse), ``dots`` per argument the node holding its tangent (None: no tangent flows
    in there); shapes are the inferred (possibly symbolic) shapes.
    """

    ins: list
    out: str
    dots: list
    attrs: dict
    in_shapes: list
    out_shape: tuple


# ------------------------------------------------------------------------ JVP rules


def tangent_terms(c, *terms):
    """One contribution per argument: ``terms[i](dot_i)`` where argument ``i`` has a
    tangent, else None. A variadic op may give one term for every argument.

    ``tangent_terms(c, lambda d: b.mul(d, c.ins[1]), lambda d: b.mul(c.ins[0], d))`` is
    the rule of ``mul``: ȧ·b and a·ḃ.
    """
    if len(terms) == 1 and len(c.dots) > 1:
        terms = terms * len(c.dots)
    if len(terms) != len(c.dots):
        raise ValueError(f"{len(terms)} tangent terms for {len(c.dots)} arguments")
    return [None if d is None else t(d) for t, d in zip(terms, c.dots)]


def same_op(name):
    """The JVP rule of a linear op of one argument: the op itself, with the node's
    attributes, applied to the tangent (``transpose``, ``reshape``, ``sum``, ...)."""

    def rule(b, c):
        return tangent_terms(c, lambda d: getattr(b, name)(d, **c.attrs))

    rule.how = "linear: the op itself on the tangent"
    return rule


def symmetric(vjp):
    """The JVP rule of an op of one argument whose Jacobian is symmetric (an elementwise
    op's is diagonal; softmax's is diag(y) − y·yᵀ): J·ẋ = Jᵀ·ẋ, its VJP with the
    tangent in place of the adjoint ȳ. Exact, nothing new to derive."""

    def rule(b, c):
        def apply(d):
            ctx = VJPContext(
                ins=c.ins,
                out=c.out,
                g=d,
                attrs=c.attrs,
                in_shapes=c.in_shapes,
                out_shape=c.out_shape,
            )
            return vjp(b, ctx)[0]

        return tangent_terms(c, apply)

    rule.how = "its VJP with ẋ for ȳ (the Jacobian is symmetric)"
    return rule


def int64(in_dtypes, attrs):
    """The dtype rule of an op whose result is always int64 (:attr:`Op.dtype`)."""
    return "int64"


def no_tangent(b, c):
    """The JVP rule of a piecewise-constant op (a mask): no tangent flows through it."""
    return [None] * len(c.ins)


no_tangent.how = "0: piecewise constant"


# ----------------------------------------------------------------------------- shapes


def broadcast_shapes(*shapes):
    """NumPy broadcasting of shapes whose entries may be symbolic; None if impossible."""
    if shapes and all(s == shapes[0] for s in shapes):  # most elementwise ops
        return tuple(shapes[0])
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(1, ndim + 1):
        ds = [s[-i] for s in shapes if len(s) >= i]
        non1 = []
        for d in ds:
            if d != 1 and d not in non1:
                non1.append(d)
        if len(non1) > 1:
            return None
        out.append(non1[0] if non1 else 1)
    return tuple(reversed(out))


def broadcast_rule(in_shapes, attrs):
    out = broadcast_shapes(*in_shapes)
    if out is None:
        raise ShapeError(
            "arguments do not broadcast: "
            + " vs ".join(dims.fmt_shape(s) for s in in_shapes)
        )
    return out


def same_shape(in_shapes, attrs):
    return tuple(in_shapes[0])


def scalar_shape(in_shapes, attrs):
    return ()


def norm_axis(axis, ndim, what="axis"):
    """One axis in range, made non-negative."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ShapeError(f"{what} must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what} {axis} is out of range for rank {ndim}")
    return axis % ndim


def norm_axes(axis, ndim):
    """``axis`` as a sorted tuple of non-negative axes; None means every axis."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (list, tuple)):
        out = tuple(sorted({norm_axis(a, ndim) for a in axis}))
        if len(out) != len(axis):
            raise ShapeError(f"axis {list(axis)} names an axis twice")
        return out
    return (norm_axis(axis, ndim),)


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def plain(op, template):
    """A math template with its placeholders read as the argument names: ``y = σ(x)``."""
    names = {"y": "y", **{a: a for a in op.args}, **{k: k for k in op.attrs}}
    return format_note(template, names)


def format_note(template, names):
    """Fill a math/derivative template's ``{placeholders}`` with display names."""
    out = template
    for key, value in names.items():
        out = out.replace("{" + key + "}", str(value))
    return out


# ------------------------------------------------------------------------ identities
# Rules for ``Op.identities`` (see :class:`Op`); each returns a node id or None.


def unit(value, at):
    """``op(x, c) -> x`` where argument ``at`` (of two) is the constant ``value``:
    ``x·1``, ``x + 0``, ``x − 0``, ``x/1``."""

    def rule(site):
        x = site.args[1 - at]
        return x if site.const(site.args[at]) == value and site.same(x) else None

    return rule


def involution(site):
    """``op(op(x)) -> x``: ``−(−x)``."""
    (a,) = site.args
    return site.args_of(a)[0] if site.op_of(a) == site.op else None


def lone_argument(site):
    """A variadic op of one argument is that argument: ``add_n(x) -> x``."""
    x = site.args[0]
    return x if len(site.args) == 1 and site.same(x) else None


def same_shape_no_op(site):
    """A shape op that leaves its argument's shape as it is: ``reshape(x) -> x``."""
    x = site.args[0]
    return x if site.same(x) else None
