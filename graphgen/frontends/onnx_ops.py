"""The ONNX op table: ONNX op type -> the handler that imports a node of it, and what
the handler takes.

A handler ``f(imp, node, ins, attrs)`` gets the :class:`~graphgen.frontends.onnx.Importer`,
the ONNX node, the names of its inputs (trailing empty ones dropped) and its attributes.
It adds graphgen ops through ``imp.emit`` and returns the node id of its output (a list,
one entry per output, None where it sets none), or records a value known at compile time
in ``imp.t``. It raises :class:`Unsupported` to say why the node cannot be imported, and
:class:`~graphgen.errors.SpecError` when the node is not valid ONNX.

The handlers register with :func:`handles`, one module per family: ``onnx_math``
(elementwise ops, matrix products, reductions), ``onnx_nn`` (convolution, pooling,
normalization, softmax) and ``onnx_tensors`` (shapes, slicing, constants, casts). Each
declares its :class:`Signature` there (how many inputs and outputs, which attributes of
which types, which inputs are float data and which integer indices), and the importer
checks every node against it before the handler runs: a handler never sees a missing
input, an attribute of the wrong type or one it does not know.
"""

from __future__ import annotations

from ..errors import SpecError

HANDLERS = {}  # ONNX op type -> handler
SIGNATURES = {}  # ONNX op type -> Signature
NO_FOLD = (
    set()
)  # ops whose handlers deal with known inputs themselves (weights, not shapes)

# declared attribute type -> (ONNX AttributeProto type name, what the error says)
TENSOR = "tensor"
SPARSE_TENSOR = "sparse tensor"
_ATTRIBUTE_TYPES = {
    "int": ("INT", "an int"),
    "bool": ("INT", "a flag, 0 or 1,"),
    "float": ("FLOAT", "a float"),
    "str": ("STRING", "a string"),
    "[int]": ("INTS", "a list of ints"),
    "[float]": ("FLOATS", "a list of floats"),
    "[str]": ("STRINGS", "a list of strings"),
    TENSOR: ("TENSOR", "a tensor"),
    SPARSE_TENSOR: ("SPARSE_TENSOR", "a sparse tensor"),
}

# a dtype letter of Signature.dtypes -> what the error says an input of it must be
DTYPE_KINDS = {
    "f": "a float tensor",
    "i": "an integer tensor",
    "b": "a bool tensor",
    "n": "a float or integer tensor",
    "*": "a tensor",
}

NEWEST = 1 << 30  # no ONNX opset is this new


class Unsupported(Exception):
    """This node cannot be imported; the message says why (collected, then reported)."""


class Signature:
    """What a handler takes: checked by the importer on every node before the handler
    runs, so the handler may index its inputs and read its attributes freely.

    Parameters
    ----------
    inputs, outputs : (min, max) or {since_opset: (min, max)}
        How many inputs (outputs) a node has; ``max`` None: any number. The first
        ``min`` inputs must be present (an empty name marks an omitted optional input).
        A dict gives the range from each opset on, for ops whose inputs changed.
    attrs : dict
        Attribute name -> type: ``int``, ``float``, ``str``, ``[int]``, ``[float]``,
        ``[str]``, :data:`TENSOR` or :data:`SPARSE_TENSOR` (ONNX's INT, FLOAT, STRING,
        INTS, FLOATS, STRINGS, TENSOR, SPARSE_TENSOR); ``bool``: an INT that is 0 or 1
        (a flag). Any other attribute is an error.
    required : tuple or dict
        The attributes a node must have: names, or name -> the ``range`` of opsets in
        which it is required.
    dtypes : str
        One letter per input: ``f`` float data, ``i`` integer (a shape, axes, indices),
        ``b`` bool, ``n`` float or integer (arithmetic), ``*`` anything. The last letter repeats for further inputs. Checked
        when the node is imported, not folded (a node whose inputs are all known is
        evaluated by ONNX's reference evaluator, which checks them itself).

    >>> s = Signature("Pad", inputs={7: (1, 1), 11: (2, 3)}, dtypes="fif")
    >>> s.inputs_for(13), s.dtype(5)
    ((2, 3), 'f')
    """

    def __init__(
        self,
        op_type,
        *,
        inputs=(1, 1),
        outputs=(1, 1),
        attrs=None,
        required=(),
        dtypes="f",
    ):
        self.op_type = op_type
        self.inputs = _by_opset(inputs)
        self.outputs = _by_opset(outputs)
        self.attrs = {}
        for name, kind in (attrs or {}).items():
            key = _type_key(kind)
            if key not in _ATTRIBUTE_TYPES:
                raise TypeError(
                    f"{op_type}: attribute {name!r} of unknown type {kind!r}"
                )
            self.attrs[name] = key
        if not isinstance(required, dict):
            required = {name: range(NEWEST) for name in required}
        unknown = set(required) - set(self.attrs)
        if unknown:
            raise TypeError(
                f"{op_type}: required attributes {unknown} are not declared"
            )
        self.required = required
        if not dtypes or set(dtypes) - set(DTYPE_KINDS):
            raise TypeError(f"{op_type}: dtypes {dtypes!r} (letters of {DTYPE_KINDS})")
        self.dtypes = dtypes

    def inputs_for(self, opset):
        """``(min, max)`` inputs of a node in ``opset`` (``max`` None: any number)."""
        return _at(self.inputs, opset)

    def outputs_for(self, opset):
        """``(min, max)`` outputs of a node in ``opset``."""
        return _at(self.outputs, opset)

    def required_for(self, opset):
        """The attribute names a node in ``opset`` must have."""
        return [name for name, opsets in self.required.items() if opset in opsets]

    def attribute_type(self, name):
        """``(ONNX type name, words)`` of a declared attribute, or None."""
        key = self.attrs.get(name)
        return _ATTRIBUTE_TYPES[key] if key else None

    def dtype(self, position):
        """The dtype letter of input ``position``."""
        return self.dtypes[min(position, len(self.dtypes) - 1)]


def _type_key(kind):
    if isinstance(kind, list) and len(kind) == 1 and isinstance(kind[0], type):
        return f"[{kind[0].__name__}]"
    if isinstance(kind, type):
        return kind.__name__
    return kind


def _by_opset(spec):
    if isinstance(spec, dict):
        return dict(sorted(spec.items()))
    return {0: tuple(spec)}


def _at(table, opset):
    found = None
    for since, value in table.items():
        if since <= opset:
            found = value
    return found if found is not None else next(iter(table.values()))


def handles(*op_types, fold=True, **signature):
    """Register the decorated handler for the ONNX ops ``op_types``, with the
    :class:`Signature` its keyword arguments declare. ``fold=False``: a node of them is
    imported by the handler even when all its inputs are known."""

    def register(f):
        for op_type in op_types:
            assert op_type not in HANDLERS, op_type
            HANDLERS[op_type] = f
            SIGNATURES[op_type] = Signature(op_type, **signature)
            if not fold:
                NO_FOLD.add(op_type)
        return f

    return register


def as_str(v):
    """A string attribute (ONNX gives bytes) as ``str``."""
    return v.decode() if isinstance(v, bytes) else v


def axis(a, rank, what="axis"):
    """``a`` in ``[-rank, rank)`` as a non-negative axis; a SpecError otherwise.

    >>> axis(-1, 3)
    2
    """
    a = int(a)
    if not -rank <= a < rank:
        raise SpecError(f"{what} {a} is out of range for a tensor of rank {rank}")
    return a + rank if a < 0 else a


def node_axes(imp, ins, attrs, since):
    """A node's ``axes``: its second input from opset ``since`` on (known at compile
    time), its attribute before; None when it has none."""
    if imp.opset >= since:
        if len(ins) > 1 and ins[1]:
            return imp.ints(ins[1], "axes")
        return None
    return [int(a) for a in attrs["axes"]] if "axes" in attrs else None
