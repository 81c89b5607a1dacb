"""ONNX models -> graphgen specs: the same NetworkX DAG a YAML spec gives.

An ONNX graph is SSA: every tensor has one producer. The importer walks the nodes in
order and keeps, per tensor name, either a graph node (an op, input or param of the spec
it builds) or a value known at compile time (an int64 shape, a Constant, anything
computed only from those, which ONNX's reference evaluator folds). So ``Shape``,
``Gather`` on shapes, ``Concat`` of shapes and the like never reach the generated code.

What becomes what:

- graph inputs that are not initializers -> inputs (``dim_param`` sizes stay symbolic);
- float initializers -> params with ``init: weights`` (the values are stored beside the
  generated module in an ``.npz``), or constants with ``freeze``;
- a float ``ConstantOfShape`` of a constant shape -> a param filled with its value: the
  light models that ship with ``onnx`` store their weights that way;
- each supported ONNX op -> one or a few graphgen ops (``docs/onnx.md`` has the table).

The handler of each ONNX op is registered in :mod:`.onnx_ops`, by family: elementwise
ops, matrix products and reductions (:mod:`.onnx_math`), convolution, pooling and
normalization (:mod:`.onnx_nn`), shapes, slicing and constants (:mod:`.onnx_tensors`).

Every unsupported op or attribute in the model is reported at once, with counts, in one
:class:`~graphgen.errors.SpecError`: never a partial module.

A model that is not valid ONNX gets one :class:`~graphgen.errors.SpecError` naming the
file and, where there is one, the node (its name, else its first output): a file that
is no ONNX model, a tensor read before it is made or made twice, a graph output nothing
makes, an initializer of an element type graphgen does not read, and a node that does
not fit its handler's :class:`~graphgen.frontends.onnx_ops.Signature` (inputs, outputs,
attributes and their types, dtypes), checked before the handler runs.

A graph output listed twice is one output of the module (its outputs are keyed by
name): it gets one cotangent in ``vjp``.
"""

from __future__ import annotations

import collections
import fnmatch
import keyword
import os

import numpy as np

from .. import graph as g
from .. import ops
from ..errors import GraphgenError, ShapeError, SpecError
from . import onnx_logic, onnx_math, onnx_nn, onnx_tensors  # noqa: F401 - fill HANDLERS
from .onnx_ops import DTYPE_KINDS, HANDLERS, NO_FOLD, SIGNATURES, Unsupported
from .shared import groups as shared_groups

MIN_OPSET = 7
SMALL_CONSTANT = 64  # entries; larger constants live in the weights file
# element types of the tensors graphgen reads (initializers, constants)
READABLE = (
    "FLOAT",
    "DOUBLE",
    "FLOAT16",
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
)


class Failure(collections.namedtuple("Failure", "op_type why node index error")):
    """Why ONNX node number ``index`` (named ``node`` in errors) was not imported:
    graphgen cannot import it (``error`` None), or it is not valid ONNX (``error``, the
    SpecError to raise). Reported only if the graph's outputs need the node."""


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the test extra installs it
        raise GraphgenError(
            "reading ONNX models needs the onnx package: pip install 'graphgen[onnx]'"
        ) from None
    return onnx


def _attrs(node):
    """A checked node's attributes: numbers, lists, ``str`` and TensorProtos."""
    onnx = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            v = _shortest(v)
        elif a.type == onnx.AttributeProto.FLOATS:
            v = [_shortest(x) for x in v]
        elif a.type == onnx.AttributeProto.STRING:
            v = v.decode()
        out[a.name] = v
    return out


def _enum_name(enum, value):
    """The name of an ONNX enum value, or the number when it has none (a corrupt file)."""
    try:
        return enum.Name(value)
    except ValueError:
        return f"<unknown type {value}>"


def label(node, index):
    """How errors name ONNX node number ``index``: its name, else its first output (node
    names may be empty), else its position."""
    return node.name or next((o for o in node.output if o), None) or f"#{index}"


def _shortest(v):
    """A float32 attribute as the shortest decimal that is that float32: 1e-05, not
    1.0000000656873453e-05 (the value a float32 computation sees is the same)."""
    return float(str(np.float32(v)))


class Importer:
    """One ONNX model -> (spec dict, weights dict); the handler of each ONNX op is in
    :data:`~graphgen.frontends.onnx_ops.HANDLERS`."""

    def __init__(
        self, model, source, freeze=(), constants=None, trainable=(), shapes=None
    ):
        onnx = _onnx()
        self.onnx = onnx
        self.model = model
        self.source = source
        self.freeze = tuple(freeze)  # glob patterns of initializers kept constant
        self.trainable = tuple(trainable)  # glob patterns of initializers made params
        self.why = {}  # initializer name -> (became "param" | "constant", why)
        self.fixed = dict(shapes or {})  # graph input -> the static shape it is given
        self.folded = 0  # nodes evaluated at import (all their inputs known)
        self.fills_reached = set()  # ConstantOfShape fills a gradient reaches
        self.graph = model.graph
        default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        if len(default) > 1:  # onnx.checker refuses it; which would a runtime use?
            raise SpecError(
                "opset_import names the default domain (ai.onnx) "
                f"{len(default)} times (opsets {', '.join(map(str, default))}); "
                "a model imports each domain once",
                source=source,
            )
        self.opset = default[0] if default else None
        newest = onnx.defs.onnx_opset_version()
        if self.opset is None or not MIN_OPSET <= self.opset <= newest:
            raise SpecError(
                f"opset {self.opset} is not supported (expected {MIN_OPSET} to {newest})",
                source=source,
            )
        self.known = dict(constants or {})  # graph inputs whose values are given
        self.inputs = {}
        self.params = {}
        self.nodes = {}
        self.weights = {}
        self.shape = {}  # graph node id -> shape
        self.is_int = set()  # graph node ids holding int64
        self.is_mask = set()  # graph node ids holding booleans, as 0/1 floats
        self.int_values = {}  # int64 node id -> its entries as sizes (onnx_logic)
        self.unknowns = 0  # made-up symbols for int64 entries known only at run time
        self.t = {}  # tensor name -> ("node", id) | ("const", ndarray)
        self.used_ids = set()  # node ids of the spec, and names reserved for it
        self.fresh_ids = g.FreshNames(self.used_ids, sep="_")
        self.fresh_keys = g.FreshNames(self.weights, sep="_")  # keys of stored arrays
        self.softmax_of = {}  # node id of a softmax over the last axis -> its logits id
        # op type -> reason -> the Failures of needed nodes
        self.unsupported = collections.defaultdict(dict)
        self.failed = {}  # tensor name -> Failure of the node that makes it, or None
        self.consumed = {i for n in self.graph.node for i in n.input} | {
            o.name for o in self.graph.output
        }

    # ------------------------------------------------------------------ helpers
    def fresh(self, base):
        name = self.fresh_ids(base or "t")
        self.used_ids.add(name)
        return name

    def emit(self, op_name, args, out=None, **attrs):
        """Add ``out = op(args, **attrs)`` to the spec; return its id (shape inferred now)."""
        op = ops.get(op_name)
        in_shapes = [self.shape_of(a) for a in args]
        try:
            _, shape = ops.infer(op, in_shapes, attrs)
        except ops.MissingAttribute as e:
            raise Unsupported(f"{op_name} needs attribute {e.attr!r}") from None
        except ShapeError as e:
            raise Unsupported(f"shapes do not fit {op_name}: {e}") from None
        nid = self.fresh(out)
        spec = {"op": op_name}
        if args:
            spec["args"] = list(args)
        spec.update(attrs)
        self.nodes[nid] = spec
        self.shape[nid] = shape
        return nid

    def shape_of(self, a):
        if isinstance(a, (int, float)):
            return ()
        return self.shape[a]

    def used(self, name):
        """Whether tensor ``name`` is read by a node or is a graph output."""
        return bool(name) and name in self.consumed

    def const(self, name):
        kind, v = self.t[name]
        return v if kind == "const" else None

    def need_const(self, name, what):
        v = self.const(name)
        if v is None:
            raise Unsupported(f"{what} must be known at compile time")
        return v

    def ints(self, name, what):
        """A 1-D integer tensor known at compile time (a shape, axes) as a list."""
        v = self.need_const(name, what)
        if v.ndim != 1:
            raise SpecError(
                f"{what} must be a 1-D tensor, not of shape {list(v.shape)}"
            )
        return [int(a) for a in v]

    def scalar(self, name, what):
        """A one-value tensor known at compile time, as that value."""
        v = self.need_const(name, what)
        if v.size != 1:
            raise SpecError(f"{what} must hold one value, not {v.size}")
        return v.reshape(-1)[0]

    def array(self, tensor, what):
        """A TensorProto (an initializer, a Constant's value) as a NumPy array; a
        SpecError naming ``what`` when graphgen does not read its element type or
        the tensor is corrupt."""
        onnx = self.onnx
        kind = _enum_name(onnx.TensorProto.DataType, tensor.data_type)
        if kind not in READABLE:
            raise SpecError(
                f"{what} has element type {kind}; graphgen reads float, integer and "
                "bool tensors"
            )
        if any(d < 0 for d in tensor.dims):
            raise SpecError(
                f"{what} has a negative size in its shape {list(tensor.dims)}"
            )
        try:
            arr = onnx.numpy_helper.to_array(tensor)
        except Exception as e:  # noqa: BLE001 - numpy and onnx raise many kinds
            raise SpecError(f"{what} cannot be read: {e}") from None
        if arr.shape != tuple(tensor.dims):
            raise SpecError(
                f"{what} holds {arr.size} values, not the {list(tensor.dims)} it declares"
            )
        return arr

    def value(self, name):
        """A graph argument for tensor ``name``: a node id, or a number for a 0-d float."""
        kind, v = self.t[name]
        if kind == "node":
            return v
        if v.dtype.kind != "f":
            raise Unsupported(
                f"a {v.dtype} tensor known at compile time is used as data; "
                "graphgen computes on float tensors (integers only as shapes and "
                "indices)"
            )
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim == 0:
            return float(arr)
        return self.constant(arr, name)

    def constant(self, arr, name):
        shape = list(arr.shape)
        if arr.size <= SMALL_CONSTANT:
            return self.emit("constant", [], name, shape=shape, value=arr.tolist())
        key = self.fresh_keys(name)
        self.weights[key] = arr
        return self.emit("constant", [], name, shape=shape, key=key)

    def rank(self, name):
        kind, v = self.t[name]
        return len(self.shape[v]) if kind == "node" else np.ndim(v)

    def dims_of(self, name):
        kind, v = self.t[name]
        return self.shape[v] if kind == "node" else tuple(np.shape(v))

    def set(self, name, nid):
        self.t[name] = ("node", nid)

    def frozen(self, name):
        """Whether ``--freeze`` names initializer (or fill) ``name``."""
        return any(_matches(name, p) for p in self.freeze)

    def forced(self, name):
        """Whether ``--trainable`` names initializer (or fill) ``name``."""
        return any(_matches(name, p) for p in self.trainable)

    def lifted_constants(self):
        """Initializers the dynamo exporter's optimizer folded from values none of
        which is a parameter (an additive causal mask of -3.4e38 built from ``arange``
        and comparisons): their ``value_info`` carries the metadata
        ``pkg.onnxscript.optimizer.folded_from``, a list of the names they were computed
        from; a parameter's name is its dotted module path (``h.0.attn.weight``), an
        op's result is not (``arange_1``, ``val_12``). A transposed weight it folded
        names its parameter among its sources, and stays a param."""
        import ast

        out = set()
        for vi in self.graph.value_info:
            for prop in vi.metadata_props:
                if prop.key != "pkg.onnxscript.optimizer.folded_from":
                    continue
                try:
                    sources = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(sources, list) and not any(
                    isinstance(n, str) and "." in n for n in sources
                ):
                    out.add(vi.name)
        return out

    def reached(self, floats):
        """The float initializers (of ``floats``) a gradient of the graph's outputs can
        reach: those with a path to an output along inputs ONNX's schemas do not mark
        non-differentiable (a Reshape's shape, a Where's condition, a comparison's
        operands), through no Cast to an integer or bool type."""
        onnx = self.onnx
        float_types = {
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        }
        no = onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable
        carries = {name: {name} for name in floats}  # tensor -> initializers in it
        for node in self.graph.node:
            try:
                schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
            except onnx.defs.SchemaError:
                schema = None
            formal = list(schema.inputs) if schema else []
            outs = list(schema.outputs) if schema else []
            found = set()
            for k, i in enumerate(node.input):
                f = formal[min(k, len(formal) - 1)] if formal else None
                if i in carries and (f is None or f.differentiation_category != no):
                    found |= carries[i]
            if not found or node.op_type in ("Shape", "Size"):
                continue
            if node.op_type == "Cast" and not any(
                a.name == "to" and a.i in float_types for a in node.attribute
            ):
                continue
            for k, o in enumerate(node.output):
                f = outs[min(k, len(outs) - 1)] if outs else None
                if o and (f is None or f.differentiation_category != no):
                    carries[o] = found | carries.get(o, set())
        out = set()
        for o in self.graph.output:
            out |= carries.get(o.name, set())
        return out

    # ------------------------------------------------------------------- import
    def run(self):
        self.check_graph()
        inits = {t.name: t for t in self.graph.initializer}
        arrays = {}
        for name, t in inits.items():
            try:
                arrays[name] = self.array(t, f"initializer {name!r}")
            except SpecError as e:
                raise e.located(self.source) from None
        fills = {
            o
            for n in self.graph.node
            if n.op_type == "ConstantOfShape"
            for o in n.output
        }
        for flag, patterns in (
            ("--freeze", self.freeze),
            ("--trainable", self.trainable),
        ):
            for p in patterns:
                if not any(_matches(n, p) for n in [*inits, *fills]):
                    raise SpecError(
                        f"{flag} {p!r} names no initializer of the model",
                        source=self.source,
                    )
        floats = [n for n, a in arrays.items() if a.dtype.kind == "f"]
        lifted = self.lifted_constants()
        reached = self.reached(floats + sorted(fills))
        self.fills_reached = reached & fills
        for name, arr in arrays.items():
            if arr.dtype.kind != "f":
                self.t[name] = ("const", arr)
                continue
            if self.frozen(name):
                why = ("constant", "--freeze")
            elif self.forced(name):
                why = ("param", "--trainable")
            elif name not in reached:
                why = ("constant", "no gradient reaches it")
            elif name in lifted:
                why = ("constant", "folded by the exporter from no parameter")
            elif arr.size == 1:  # a scale, an epsilon, a fill: 0-d or of shape (1,)
                why = ("constant", "one value (a number)")
            else:
                why = ("param", "a gradient reaches it")
            self.why[name] = why
            if why[0] == "param":
                self.add_param(name, arr.shape, "weights")
                self.weights[name] = arr
            else:  # known at compile time: it folds, or becomes a constant node
                self.used_ids.add(name)
                self.t[name] = ("const", arr)
        unknown = sorted(
            set(self.fixed) - {i.name for i in self.graph.input if i.name not in inits}
        )
        if unknown:
            raise SpecError(
                f"--shape names {unknown}, which are not inputs of the model",
                source=self.source,
            )
        for inp in self.graph.input:
            if inp.name in inits:
                continue
            if inp.name in self.known:
                self.t[inp.name] = ("const", np.asarray(self.known[inp.name]))
                continue
            self.add_input(inp)
        for index, node in enumerate(self.graph.node):
            where = label(node, index)
            failure = None
            if any(i in self.failed for i in node.input if i):
                # downstream of a failure: reported only if its op is unknown too
                if node.op_type not in HANDLERS:
                    why = "no graphgen op for it"
                    failure = Failure(node.op_type, why, where, index, None)
            else:
                try:
                    self.import_node(node, where)
                    continue
                except Unsupported as e:
                    failure = Failure(node.op_type, str(e), where, index, None)
                except GraphgenError as e:  # not valid ONNX
                    e.located(self.source, where)
                    failure = Failure(node.op_type, e.message, where, index, e)
            for o in node.output:
                if o:
                    self.failed[o] = failure
        self._report_needed_failures()
        outputs = []
        for name in dict.fromkeys(o.name for o in self.graph.output):
            if name not in self.t:
                continue  # its producer is reported as unsupported
            try:
                outputs.append(self.output(name))
            except Unsupported as e:
                raise SpecError(
                    f"graph output {name!r}: {e}", source=self.source
                ) from None
        if self.unsupported:
            self._raise_unsupported()
        self.drop_dead(outputs)
        if not self.nodes:  # only inputs and params: a spec needs a node, so views
            outputs = [
                self.emit("reshape", [v], v, shape=list(self.shape[v])) for v in outputs
            ]
        return outputs

    def drop_dead(self, outputs):
        """Drop the nodes and params no output needs (a dead int64 Reshape of the ids,
        a weight only they read), before the spec is validated."""
        live, stack = set(), list(outputs)
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            stack.extend(
                a for a in self.nodes.get(n, {}).get("args", []) if isinstance(a, str)
            )
        for n in [n for n in self.nodes if n not in live]:
            spec = self.nodes.pop(n)
            if spec.get("key") is not None:
                self.weights.pop(spec["key"], None)
        for name in [p for p in self.params if p not in live]:
            del self.params[name]
            self.weights.pop(name, None)
            self.why[name] = ("constant", "nothing the outputs need reads it")

    def _raise_unsupported(self):
        """One error for the failed nodes the outputs need: the first that is not valid
        ONNX; else the node graphgen cannot import when it is the only one; else the
        count and first node of each op type and reason."""
        failures = [
            f
            for by_reason in self.unsupported.values()
            for fs in by_reason.values()
            for f in fs
        ]
        invalid = [f for f in failures if f.error is not None]
        if invalid:
            raise min(invalid, key=lambda f: f.index).error
        found = [
            (op_type, why, [f.node for f in nodes])
            for op_type in sorted(self.unsupported)
            for why, nodes in sorted(self.unsupported[op_type].items())
        ]
        if len(found) == 1 and len(found[0][2]) == 1:
            op_type, why, nodes = found[0]
            raise SpecError(f"{op_type}: {why}", node=nodes[0], source=self.source)
        lines = []
        total = 0
        for op_type, why, nodes in found:
            total += len(nodes)
            more = ", ..." if len(nodes) > 1 else ""
            lines.append(f"  {op_type} ×{len(nodes)}: {why} (node {nodes[0]!r}{more})")
        raise SpecError(
            f"the model uses {total} node(s) graphgen cannot import:\n"
            + "\n".join(lines),
            source=self.source,
        )

    def _report_needed_failures(self):
        """Collect the failed nodes the graph's outputs depend on (dead ones do not
        matter), by op type and reason."""
        producer = {o: n for n in self.graph.node for o in n.output if o}
        seen, counted = set(), set()
        stack = [o.name for o in reversed(self.graph.output)]
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if t in seen or node is None:
                continue
            seen.add(t)
            why = next((self.failed[o] for o in node.output if o in self.failed), None)
            if why is not None and id(node) not in counted:
                counted.add(id(node))
                self.unsupported[why.op_type].setdefault(why.why, []).append(why)
            stack.extend(i for i in reversed(node.input) if i)

    def check_graph(self):
        """The model is an ONNX graph: each tensor made once, before it is read, and
        every graph output made. A SpecError naming the tensor (and node) otherwise."""
        made = {}  # tensor name -> what made it
        for what, names in (
            ("a graph input", [i.name for i in self.graph.input]),
            ("an initializer", [t.name for t in self.graph.initializer]),
        ):
            for k, name in enumerate(names):
                if not name:
                    raise SpecError(
                        f"{what[what.index(' ') + 1 :]} '' (number {k}) has no name",
                        source=self.source,
                    )
                if made.get(name) == what:
                    raise SpecError(
                        f"{what[what.index(' ') + 1 :]} {name!r} is listed twice",
                        source=self.source,
                    )
                made[name] = what
        if self.graph.sparse_initializer:
            name = self.graph.sparse_initializer[0].values.name
            raise SpecError(
                f"initializer {name!r} is sparse; graphgen reads dense initializers "
                "only",
                source=self.source,
            )
        later = {o: i for i, n in enumerate(self.graph.node) for o in n.output if o}
        for index, node in enumerate(self.graph.node):
            where = label(node, index)
            for i in node.input:
                if not i or i in made:
                    continue
                if i in later:
                    why = (
                        "is made by this node"
                        if later[i] == index
                        else (
                            "is made by a later node (ONNX nodes come in topological order)"
                        )
                    )
                else:
                    why = "is not a graph input, an initializer or a node's output"
                raise SpecError(
                    f"{node.op_type}'s input {i!r} {why}",
                    node=where,
                    source=self.source,
                )
            for o in node.output:
                if not o:
                    continue
                if o in made:
                    raise SpecError(
                        f"{node.op_type}'s output {o!r} is already {made[o]} (each "
                        "tensor is made once)",
                        node=where,
                        source=self.source,
                    )
                made[o] = f"the output of node {where!r}"
        if not self.graph.output:
            raise SpecError(
                "the graph lists no outputs: the module would compute nothing",
                source=self.source,
            )
        for o in self.graph.output:
            if o.name not in made:
                raise SpecError(
                    f"graph output {o.name!r} is not a graph input, an initializer or "
                    "a node's output",
                    source=self.source,
                )

    def add_param(self, name, shape, init):
        self.used_ids.add(name)
        self.params[name] = {"shape": [int(d) for d in shape], "init": init}
        self.shape[name] = tuple(int(d) for d in shape)
        self.set(name, name)

    def add_input(self, inp):
        if inp.type.WhichOneof("value") != "tensor_type":
            kind = inp.type.WhichOneof("value") or "no type"
            raise SpecError(
                f"input {inp.name!r} is of {kind.replace('_', ' ')}; expected a tensor",
                source=self.source,
            )
        tt = inp.type.tensor_type
        elem = tt.elem_type
        if elem == self.onnx.TensorProto.INT64 or elem == self.onnx.TensorProto.INT32:
            dtype = "int64"
        elif elem in (
            self.onnx.TensorProto.FLOAT,
            self.onnx.TensorProto.DOUBLE,
            self.onnx.TensorProto.FLOAT16,
            self.onnx.TensorProto.BOOL,  # a 0/1 mask of the float dtype
        ):
            dtype = None
        else:
            raise SpecError(
                f"input {inp.name!r} has element type "
                f"{_enum_name(self.onnx.TensorProto.DataType, elem)}; expected a float, "
                "int64 or bool",
                source=self.source,
            )
        if not tt.HasField("shape"):
            raise SpecError(
                f"input {inp.name!r} has no shape; graphgen needs static ranks",
                source=self.source,
            )
        shape = []
        fixed = self.fixed.pop(inp.name, None)
        # --shape NAME=2x8: symbolic sizes made static, declared ones kept
        if fixed is not None and (
            len(fixed) != len(tt.shape.dim)
            or any(
                d.HasField("dim_value") and d.dim_value != s
                for d, s in zip(tt.shape.dim, fixed)
            )
        ):
            declared = [
                d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                for d in tt.shape.dim
            ]
            raise SpecError(
                f"--shape {inp.name}={'x'.join(map(str, fixed))} does not fit the "
                f"input's declared shape {declared}",
                source=self.source,
            )
        for i, d in enumerate(tt.shape.dim):
            if fixed is not None:
                shape.append(int(fixed[i]))
                continue
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    raise SpecError(
                        f"input {inp.name!r} has a negative size {d.dim_value} in axis "
                        f"{i}",
                        source=self.source,
                    )
                shape.append(int(d.dim_value))
            elif _symbol(d.dim_param):
                shape.append(d.dim_param)
            else:
                shape.append("batch" if i == 0 else f"{_ident(inp.name)}_d{i}")
        self.used_ids.add(inp.name)
        self.inputs[inp.name] = (
            {"shape": shape, "dtype": dtype} if dtype else {"shape": shape}
        )
        self.shape[inp.name] = tuple(shape)
        if dtype == "int64":
            self.is_int.add(inp.name)
        if elem == self.onnx.TensorProto.BOOL:
            self.is_mask.add(inp.name)
        self.set(inp.name, inp.name)

    def output(self, name):
        kind, v = self.t[name]
        if kind == "const" and np.asarray(v).dtype.kind in "iu":  # a shape, a size
            v = onnx_logic.int_arg(self, name)
        elif kind == "const":
            v = self.value(name)
            if isinstance(v, float):
                v = self.constant(np.asarray(v), name)
        if v != name:  # an alias (Identity, Dropout): a named view of the value
            v = self.emit("reshape", [v], name, shape=list(self.shape[v]))
        return v  # an op node, input or param of that name

    def import_node(self, node, where):
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"domain {node.domain!r} is not supported")
        handler = HANDLERS.get(node.op_type)
        known = [i for i in node.input if i]
        for i in known:
            if i not in self.t:
                raise Unsupported(f"input {i!r} is not produced by a supported node")
        if (
            known
            and all(self.const(i) is not None for i in known)
            and node.op_type not in NO_FOLD
        ):
            # fold first, whatever the op: every input is known at compile time
            if handler is not None:
                self.check(node, SIGNATURES[node.op_type])
            self.check_fold_types(node, [i for i in node.input])
            return self.fold(node)
        if handler is None:
            raise Unsupported("no graphgen op for it")
        sig = SIGNATURES[node.op_type]
        ins = self.check(node, sig)
        self.check_dtypes(node, sig, ins)
        attrs = _attrs(node)
        result = handler(self, node, ins, attrs)
        outs = result if isinstance(result, list) else [result]
        for name, nid in zip(node.output, outs):
            if not name or nid is None:
                continue
            if isinstance(nid, float):  # a number passed through (Identity of a scalar)
                self.t[name] = ("const", np.asarray(nid))
            else:
                self.set(name, nid)

    def check(self, node, sig):
        """Node ``node`` fits its handler's signature ``sig`` and is an op of the model's
        opset: its inputs and outputs, attributes and their types. Returns its input
        names, trailing empty ones dropped. A SpecError saying what was expected
        otherwise (the caller adds the node)."""
        op = node.op_type
        schema = self.schema(op)
        ins = list(node.input)
        while ins and not ins[-1]:
            ins.pop()
        for what, given, (lo, hi) in (
            ("input", list(node.input), sig.inputs_for(self.opset)),
            ("output", list(node.output), sig.outputs_for(self.opset)),
        ):
            n = len(ins) if what == "input" else len(given)  # omitted trailing inputs
            if n < lo or (hi is not None and len(given) > hi):
                want = f"{lo} or more" if hi is None else f"{lo} to {hi}"
                want = f"{lo}" if lo == hi else want
                raise SpecError(
                    f"{op} takes {want} {what}{'' if want == '1' else 's'} in opset "
                    f"{self.opset}; this node has {len(given)}"
                )
            if what == "input":
                slots = list(node.input) if hi is None else ins  # variadic: no gaps
                empty = [
                    k for k, i in enumerate(slots) if not i and (k < lo or hi is None)
                ]
                if empty:
                    raise SpecError(
                        f"{op}'s input {empty[0]} is empty; it is not optional"
                    )
        seen = set()
        for a in node.attribute:
            declared = sig.attribute_type(a.name)
            if declared is None or a.name not in schema.attributes:
                known = sorted(k for k in sig.attrs if k in schema.attributes)
                raise SpecError(
                    f"{op} has no attribute {a.name!r} in opset {self.opset} (it takes: "
                    f"{', '.join(known) or 'none'})"
                )
            if a.name in seen:
                raise SpecError(f"{op}'s attribute {a.name!r} is given twice")
            seen.add(a.name)
            kind, words = declared
            have = _enum_name(self.onnx.AttributeProto.AttributeType, a.type)
            if a.ref_attr_name:
                raise SpecError(
                    f"{op}'s attribute {a.name!r} refers to a function's attribute "
                    f"{a.ref_attr_name!r}, outside a function"
                )
            if have != kind:
                raise SpecError(
                    f"{op}'s attribute {a.name!r} must be {words} ({kind}), not {have}"
                )
            if sig.attrs[a.name] == "bool" and a.i not in (0, 1):
                raise SpecError(
                    f"{op}'s attribute {a.name!r} must be 0 or 1, not {a.i}"
                )
            if kind == "STRING":
                try:
                    a.s.decode()
                except UnicodeDecodeError:
                    raise SpecError(
                        f"{op}'s attribute {a.name!r} is not UTF-8 text"
                    ) from None
        for name in sig.required_for(self.opset):
            if name not in seen:
                raise SpecError(
                    f"{op} needs attribute {name!r} ({sig.attribute_type(name)[1]})"
                )
        return ins

    def schema(self, op):
        """ONNX's schema of ``op`` in the model's opset; a SpecError if it has none."""
        onnx = self.onnx
        try:
            return onnx.defs.get_schema(op, self.opset, "")
        except onnx.defs.SchemaError:
            raise SpecError(f"{op} is not an op of ONNX opset {self.opset}") from None

    def check_fold_types(self, node, ins):
        """The known inputs of a node about to be folded have types its ONNX schema
        allows (ONNX's reference evaluator would compute on others)."""
        onnx = self.onnx
        schema = self.schema(node.op_type)
        allowed = {
            c.type_param_str: c.allowed_type_strs for c in schema.type_constraints
        }
        formals = list(schema.inputs)
        bound = {}
        for k, name in enumerate(ins):
            if not name or not formals:
                continue
            v = self.const(name)
            try:
                elem = onnx.helper.np_dtype_to_tensor_dtype(v.dtype)
            except (KeyError, TypeError, ValueError):
                elem = None
            have = f"tensor({_enum_name(onnx.TensorProto.DataType, elem).lower()})"
            param = formals[min(k, len(formals) - 1)].type_str
            if elem is None or have not in allowed.get(param, [param]):
                raise SpecError(
                    f"{node.op_type}'s input {k} ({name!r}) is a {v.dtype} tensor, "
                    f"which {node.op_type} does not take"
                )
            if bound.setdefault(param, have) != have:
                raise SpecError(
                    f"{node.op_type}'s inputs of type {param} differ: {bound[param]} "
                    f"and {have} ({name!r})"
                )

    def check_dtypes(self, node, sig, ins):
        """Each input of an imported node has the dtype its handler declares (float
        data, integer indices...): a SpecError naming the input otherwise."""
        for k, name in enumerate(ins):
            if not name:
                continue
            want = sig.dtype(k)
            kind, v = self.t[name]
            if kind == "node":
                have = "i" if v in self.is_int else "b" if v in self.is_mask else "f"
                words = {"i": "int64", "b": "bool", "f": "float"}[have]
            else:
                have = {"f": "f", "i": "i", "u": "i", "b": "b"}.get(v.dtype.kind, "?")
                words = str(v.dtype)
            if want != "*" and have != want and not (want == "n" and have in "fi"):
                raise SpecError(
                    f"{node.op_type}'s input {k} ({name!r}) is {words}; it must be "
                    f"{DTYPE_KINDS[want]}"
                )

    def fold(self, node):
        """Evaluate a node whose inputs are all known, with ONNX's reference evaluator."""
        from onnx.reference import ReferenceEvaluator

        onnx = self.onnx
        feeds = {i: self.const(i) for i in node.input if i}
        graph = onnx.helper.make_graph(
            [node],
            "fold",
            [
                onnx.helper.make_tensor_value_info(
                    i, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape
                )
                for i, v in feeds.items()
            ],
            [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o],
        )
        m = onnx.helper.make_model(graph, opset_imports=self.model.opset_import)
        try:
            values = ReferenceEvaluator(m).run(None, feeds)
        except Exception as e:  # noqa: BLE001 - any failure: this node cannot fold
            raise Unsupported(f"cannot evaluate it at compile time ({e})") from None
        for name, v in zip([o for o in node.output if o], values):
            self.t[name] = ("const", np.asarray(v))
        self.folded += 1


def _matches(name, pattern):
    """``name`` is ``pattern``, or matches it as a glob (``encoder.*``)."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _symbol(name):
    """Whether a ``dim_param`` can name a symbolic size as it is (else one is made up)."""
    return name.isascii() and name.isidentifier() and not keyword.iskeyword(name)


def _ident(name):
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def read(path):
    """The ``ModelProto`` in file ``path`` (with its external data); a SpecError naming
    the file when it cannot be read or holds no ONNX model."""
    onnx = _onnx()
    source = os.fspath(path)
    if os.path.isdir(source):
        raise SpecError("cannot read ONNX model: it is a directory", source=source)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpecError(
            f"cannot read ONNX model: {e.strerror or e}", source=source
        ) from None
    model = _parse(data, source)
    if any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ):
        try:
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(source))
            )
        except Exception as e:  # noqa: BLE001 - files, paths, protobuf
            raise SpecError(
                f"cannot read the external data of ONNX model: {e}", source=source
            ) from None
    return model


def _parse(data, source):
    """Bytes -> a ``ModelProto`` that has a graph; a SpecError naming ``source``."""
    onnx = _onnx()
    if not data:
        raise SpecError("cannot read ONNX model: the file is empty", source=source)
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises many kinds
        raise SpecError(
            f"cannot read ONNX model: it is not an ONNX protobuf ({e})", source=source
        ) from None
    if not model.HasField("graph") or not model.opset_import:
        missing = "graph" if not model.HasField("graph") else "opset_import"
        raise SpecError(
            f"cannot read ONNX model: it parses, but has no {missing}", source=source
        )
    where = _not_text(model)
    if where:
        raise SpecError(
            f"cannot read ONNX model: its {where} is not UTF-8 text", source=source
        )
    return model


def _not_text(model):
    """The path of the first string field of ``model`` that is not valid UTF-8 (protobuf
    hands those over as bytes), or None."""
    from google.protobuf.descriptor import FieldDescriptor

    string, message = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    stack = [(model, "model")]
    while stack:
        msg, path = stack.pop()
        for field, value in msg.ListFields():
            if field.type not in (string, message):
                continue
            many = getattr(field, "is_repeated", None)
            if many is None:  # protobuf < 5
                many = field.label == FieldDescriptor.LABEL_REPEATED
            values = list(value) if many else [value]
            for k, v in enumerate(values):
                at = f"{path}.{field.name}" + (f"[{k}]" if many else "")
                if field.type == message:
                    stack.append((v, at))
                elif not isinstance(v, str):
                    return at
    return None


def to_spec(
    model,
    *,
    source="<onnx>",
    loss=None,
    labels=None,
    freeze=(),
    trainable=(),
    dtype=None,
    constants=None,
    vjp=True,
    info=None,
    shapes=None,
):
    """An ONNX model (path, bytes or ``ModelProto``) -> ``(spec dict, weights dict)``.

    ``vjp``: without a loss, the module gets ``vjp(cotangents, **arrays)``.
    ``constants``: values for graph inputs that are to be compile-time constants (shape
    or axes inputs, as ONNX's node tests feed them); those inputs leave the signature.

    ``loss``: ``"softmax_cross_entropy"`` or ``"mse"`` appends a loss node on the model's
    (single) output, with ``labels`` naming the new input holding the targets. A model
    output made by a Softmax over the last axis is replaced by its logits for
    ``softmax_cross_entropy``: the loss applies the softmax itself.
    """
    onnx = _onnx()
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = read(source)
    elif isinstance(model, bytes):
        model = _parse(model, source)
    imp = Importer(
        model,
        source,
        freeze=freeze,
        constants=constants,
        trainable=trainable,
        shapes=shapes,
    )
    outputs = imp.run()
    if info is not None:  # what graphgen import reports
        info["folded"] = imp.folded
        info["initializers"] = dict(imp.why)
        stored = {n: imp.weights[n] for n in imp.params if n in imp.weights}
        info["shared"] = shared_groups(stored)
    # the first float input's type; without one (token ids in), the first output's
    first_type = next(
        (
            i.type.tensor_type.elem_type
            for i in model.graph.input
            if i.name in imp.inputs and i.name not in imp.is_int
        ),
        next(
            (
                o.type.tensor_type.elem_type
                for o in model.graph.output
                if o.type.tensor_type.elem_type
                in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
            ),
            None,
        ),
    )
    fdtype = dtype or (
        "float64" if first_type == onnx.TensorProto.DOUBLE else "float32"
    )
    name = _ident(model.graph.name or os.path.splitext(os.path.basename(source))[0])
    spec = {"name": name, "dtype": fdtype}
    if imp.inputs:
        spec["inputs"] = imp.inputs
    if imp.params:
        spec["params"] = imp.params
    spec["nodes"] = imp.nodes
    spec["outputs"] = outputs
    if loss is not None:
        if len(outputs) != 1:
            raise SpecError(
                f"--loss needs a model with one output, this one has {len(outputs)} "
                f"(outputs {outputs})",
                source=source,
            )
        if not labels:
            raise SpecError("--loss needs --labels NAME for the targets", source=source)
        if labels in imp.used_ids:
            raise SpecError(
                f"--labels {labels!r} is already a name in the model", source=source
            )
        out = outputs[0]
        shape = list(imp.shape[out])
        if loss == "softmax_cross_entropy":
            logits = imp.softmax_of.get(out, out)
            spec["inputs"] = {
                **spec.get("inputs", {}),
                labels: {"shape": list(imp.shape[logits])[:-1], "dtype": "int64"},
            }
            args = [logits, labels]
        elif loss == "mse":
            spec["inputs"] = {**spec.get("inputs", {}), labels: {"shape": shape}}
            args = [out, labels]
        else:
            raise SpecError(
                f"unknown loss {loss!r} (expected softmax_cross_entropy or mse)",
                source=source,
            )
        loss_id = imp.fresh("loss")
        spec["nodes"][loss_id] = {"op": loss, "args": args}
        spec["outputs"] = outputs + [loss_id]
        spec["loss"] = loss_id
    if loss is None and vjp:
        spec["vjp"] = True
    if imp.weights:
        spec["weights"] = os.path.splitext(os.path.basename(source))[0] + ".npz"
    return spec, imp.weights


def load(model, **options):
    """An ONNX model -> the validated, shape-inferred ``networkx.DiGraph``."""
    from ..passes.shapes import prepare
    from . import spec as specmod

    data, weights = to_spec(model, **options)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<onnx>"
    G = specmod.from_dict(data, source=source, weights=weights)
    return prepare(G)
