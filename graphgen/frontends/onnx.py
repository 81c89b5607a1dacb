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

Every unsupported op or attribute in the model is reported at once, with counts, in one
:class:`~graphgen.errors.SpecError`: never a partial module.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from .. import dims, ops
from .. import graph as g
from ..errors import GraphgenError, ShapeError, SpecError

MIN_OPSET = 7
SMALL_CONSTANT = 64  # entries; larger constants live in the weights file


class Unsupported(Exception):
    """This node cannot be imported; the message says why (collected, then reported)."""


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the test extra installs it
        raise GraphgenError(
            "reading ONNX models needs the onnx package: pip install 'graphgen[onnx]'"
        ) from None
    return onnx


def _attrs(node):
    onnx = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            v = _shortest(v)
        elif a.type == onnx.AttributeProto.FLOATS:
            v = [_shortest(x) for x in v]
        out[a.name] = v
    return out


def _shortest(v):
    """A float32 attribute as the shortest decimal that is that float32: 1e-05, not
    1.0000000656873453e-05 (the value a float32 computation sees is the same)."""
    return float(str(np.float32(v)))


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


class Importer:
    """One ONNX model -> (spec dict, weights dict)."""

    def __init__(self, model, source, freeze=(), constants=None):
        onnx = _onnx()
        self.onnx = onnx
        self.model = model
        self.source = source
        self.freeze = set(freeze)
        self.graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
        )
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
        self.t = {}  # tensor name -> ("node", id) | ("const", ndarray)
        self.used_ids = set()  # node ids of the spec, and names reserved for it
        self.fresh_ids = g.FreshNames(self.used_ids, sep="_")
        self.fresh_keys = g.FreshNames(self.weights, sep="_")  # keys of stored arrays
        self.softmax_of = {}  # node id of a softmax over the last axis -> its logits id
        self.unsupported = collections.defaultdict(collections.Counter)
        self.failed = {}  # tensor name -> (op_type, reason) of the node that failed
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

    def value(self, name):
        """A graph argument for tensor ``name``: a node id, or a number for a 0-d float."""
        kind, v = self.t[name]
        if kind == "node":
            return v
        if v.dtype.kind not in "fc" and v.dtype != np.bool_:
            raise Unsupported(
                "an integer tensor known at compile time is used as data; "
                "only shapes and indices may be integer"
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

    # ------------------------------------------------------------------- import
    def run(self):
        onnx = self.onnx
        inits = {t.name: t for t in self.graph.initializer}
        for name, t in inits.items():
            arr = onnx.numpy_helper.to_array(t)
            if arr.dtype.kind == "f" and name not in self.freeze:
                self.add_param(name, arr.shape, "weights")
                self.weights[name] = arr
            elif arr.dtype.kind == "f":
                self.used_ids.add(name)
                self.set(name, self.constant(arr.astype(np.float64), name))
            else:
                self.t[name] = ("const", arr)
        fills = {
            o
            for n in self.graph.node
            if n.op_type == "ConstantOfShape"
            for o in n.output
        }
        not_weights = self.freeze - set(inits) - fills
        if not_weights:
            raise SpecError(
                f"--freeze names {sorted(not_weights)}, which are not initializers",
                source=self.source,
            )
        for inp in self.graph.input:
            if inp.name in inits:
                continue
            if inp.name in self.known:
                self.t[inp.name] = ("const", np.asarray(self.known[inp.name]))
                continue
            self.add_input(inp)
        for node in self.graph.node:
            if any(i in self.failed for i in node.input):
                # downstream of a failure: reported only if its op is unknown too
                unknown = getattr(self, f"op_{node.op_type}", None) is None
                for o in node.output:
                    self.failed[o] = (
                        (node.op_type, "no graphgen op for it") if unknown else None
                    )
                continue
            try:
                self.import_node(node)
            except Unsupported as e:
                for o in node.output:
                    self.failed[o] = (node.op_type, str(e))
        self._report_needed_failures()
        outputs = []
        for o in self.graph.output:
            if o.name not in self.t:
                continue  # its producer is reported as unsupported
            outputs.append(self.output(o.name))
        if self.unsupported:
            lines = []
            total = 0
            for op_type in sorted(self.unsupported):
                for why, count in sorted(self.unsupported[op_type].items()):
                    total += count
                    lines.append(f"  {op_type} ×{count}: {why}")
            raise SpecError(
                f"the model uses {total} node(s) graphgen cannot import:\n"
                + "\n".join(lines),
                source=self.source,
            )
        return outputs

    def _report_needed_failures(self):
        """Count the failed nodes the graph's outputs depend on (dead ones do not matter)."""
        producer = {o: n for n in self.graph.node for o in n.output if o}
        seen, counted = set(), set()
        stack = [o.name for o in self.graph.output]
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if t in seen or node is None:
                continue
            seen.add(t)
            why = self.failed.get(node.output[0])
            if why is not None and id(node) not in counted:
                counted.add(id(node))
                self.unsupported[why[0]][why[1]] += 1
            stack.extend(i for i in node.input if i)

    def add_param(self, name, shape, init):
        self.used_ids.add(name)
        self.params[name] = {"shape": [int(d) for d in shape], "init": init}
        self.shape[name] = tuple(int(d) for d in shape)
        self.set(name, name)

    def add_input(self, inp):
        tt = inp.type.tensor_type
        elem = tt.elem_type
        if elem == self.onnx.TensorProto.INT64 or elem == self.onnx.TensorProto.INT32:
            dtype = "int64"
        elif elem in (
            self.onnx.TensorProto.FLOAT,
            self.onnx.TensorProto.DOUBLE,
            self.onnx.TensorProto.FLOAT16,
        ):
            dtype = None
        else:
            raise SpecError(
                f"input {inp.name!r} has element type "
                f"{self.onnx.TensorProto.DataType.Name(elem)}; expected a float or int64",
                source=self.source,
            )
        if not tt.HasField("shape"):
            raise SpecError(
                f"input {inp.name!r} has no shape; graphgen needs static ranks",
                source=self.source,
            )
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.dim_param and d.dim_param.isidentifier():
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
        self.set(inp.name, inp.name)

    def output(self, name):
        kind, v = self.t[name]
        if kind == "const":
            v = self.value(name)
            if isinstance(v, float):
                v = self.constant(np.asarray(v), name)
        if v != name or v in self.inputs or v in self.params:
            # an alias (Identity, Dropout) or an input: a named view of the value
            v = self.emit("reshape", [v], name, shape=list(self.shape[v]))
        return v

    def import_node(self, node):
        for i in node.input:
            if i and i not in self.t:
                raise Unsupported(f"input {i!r} is not produced by a supported node")
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"domain {node.domain!r} is not supported")
        handler = getattr(self, f"op_{node.op_type}", None)
        if handler is None:
            raise Unsupported("no graphgen op for it")
        ins = list(node.input)
        while ins and not ins[-1]:
            ins.pop()
        consts = [i for i in ins if i]
        if (
            consts
            and all(self.const(i) is not None for i in consts)
            and node.op_type not in NO_FOLD
        ):
            return self.fold(node)
        attrs = _attrs(node)
        result = handler(node, ins, attrs)
        outs = result if isinstance(result, list) else [result]
        for name, nid in zip(node.output, outs):
            if name and nid is not None:
                self.set(name, nid)

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

    # ---------------------------------------------------------------- op table
    def _unary(graphgen_op):
        def handler(self, node, ins, attrs):
            return self.emit(graphgen_op, [self.value(ins[0])], node.output[0])

        return handler

    op_Relu = _unary("relu")
    op_Sigmoid = _unary("sigmoid")
    op_Tanh = _unary("tanh")
    op_Exp = _unary("exp")
    op_Log = _unary("log")
    op_Sqrt = _unary("sqrt")
    op_Abs = _unary("abs")
    op_Neg = _unary("neg")
    op_Sin = _unary("sin")
    op_Cos = _unary("cos")
    op_Softplus = _unary("softplus")
    op_Erf = _unary("erf")

    def op_Identity(self, node, ins, attrs):
        return self.value(ins[0])

    def op_Dropout(self, node, ins, attrs):
        if len(node.output) > 1 and self.used(node.output[1]):
            raise Unsupported("its mask output is used (only inference is supported)")
        if len(ins) > 2 and ins[2]:
            training = self.const(ins[2])
            if training is None or bool(training):
                raise Unsupported("training_mode must be a constant false")
        return self.value(ins[0])

    def op_LeakyRelu(self, node, ins, attrs):
        return self.emit(
            "leaky_relu",
            [self.value(ins[0])],
            node.output[0],
            alpha=float(attrs.get("alpha", 0.01)),
        )

    def op_Gelu(self, node, ins, attrs):
        approximate = _s(attrs.get("approximate", "none"))
        return self.emit(
            "gelu", [self.value(ins[0])], node.output[0], approximate=approximate
        )

    def op_Reciprocal(self, node, ins, attrs):
        return self.emit("div", [1.0, self.value(ins[0])], node.output[0])

    def _binary(graphgen_op):
        def handler(self, node, ins, attrs):
            if attrs.get("broadcast") == 1 and "axis" in attrs and self.opset < 7:
                raise Unsupported("legacy broadcast with axis")
            a, b = self.value(ins[0]), self.value(ins[1])
            if isinstance(a, float) and isinstance(b, float):
                raise Unsupported("both arguments are numbers")
            return self.emit(graphgen_op, [a, b], node.output[0])

        return handler

    op_Add = _binary("add")
    op_Sub = _binary("sub")
    op_Mul = _binary("mul")
    op_Div = _binary("div")
    op_Pow = _binary("pow")

    def op_Sum(self, node, ins, attrs):
        args = [self.value(i) for i in ins]
        if len(args) == 1:
            return args[0]
        return self.emit("add_n", args, node.output[0])

    def op_Mean(self, node, ins, attrs):
        args = [self.value(i) for i in ins]
        if len(args) == 1:
            return args[0]
        total = self.emit("add_n", args, f"{node.output[0]}/sum")
        return self.emit("div", [total, float(len(args))], node.output[0])

    def _chain(graphgen_op):
        """A variadic ONNX op as a chain of a binary graphgen op: max(a, b, c)."""

        def handler(self, node, ins, attrs):
            args = [self.value(i) for i in ins]
            out = args[0]
            for k, a in enumerate(args[1:], 1):
                name = node.output[0] if k == len(args) - 1 else f"{node.output[0]}/{k}"
                out = self.emit(graphgen_op, [out, a], name)
            return out

        return handler

    op_Max = _chain("maximum")
    op_Min = _chain("minimum")

    def op_Clip(self, node, ins, attrs):
        lo, hi = attrs.get("min"), attrs.get("max")
        if self.opset >= 11:
            lo = (
                float(self.need_const(ins[1], "min"))
                if len(ins) > 1 and ins[1]
                else None
            )
            hi = (
                float(self.need_const(ins[2], "max"))
                if len(ins) > 2 and ins[2]
                else None
            )
        return self.emit("clip", [self.value(ins[0])], node.output[0], min=lo, max=hi)

    def op_MatMul(self, node, ins, attrs):
        return self.emit(
            "matmul", [self.value(ins[0]), self.value(ins[1])], node.output[0]
        )

    def op_Gemm(self, node, ins, attrs):
        out = node.output[0]
        a, b = self.value(ins[0]), self.value(ins[1])
        if self.rank(ins[0]) != 2 or self.rank(ins[1]) != 2:
            raise Unsupported("A and B must be matrices")
        if attrs.get("transA", 0):
            a = self.emit("transpose", [a], f"{out}/A_T")
        if attrs.get("transB", 0):
            b = self.emit("transpose", [b], f"{out}/B_T")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        has_c = len(ins) > 2 and ins[2] and beta != 0.0
        y = self.emit(
            "matmul", [a, b], out if alpha == 1.0 and not has_c else f"{out}/AB"
        )
        if alpha != 1.0:
            y = self.emit("mul", [y, alpha], out if not has_c else f"{out}/alpha_AB")
        if has_c:
            c = self.value(ins[2])
            if beta != 1.0:
                c = self.emit("mul", [c, beta], f"{out}/beta_C")
            y = self.emit("add", [y, c], out)
        return y

    def _spatial_attrs(self, attrs, names):
        out = {}
        for k in names:
            if k in attrs:
                v = attrs[k]
                out[k] = _s(v) if isinstance(v, bytes) else v
        if "pads" in out:
            out["pads"] = [int(p) for p in out["pads"]]
        for k in ("strides", "dilations", "kernel_shape"):
            if k in out:
                out[k] = [int(p) for p in out[k]]
        return out

    def op_Conv(self, node, ins, attrs):
        out = node.output[0]
        at = self._spatial_attrs(
            attrs, ("strides", "pads", "dilations", "group", "auto_pad", "kernel_shape")
        )
        if "group" in at:  # ONNX's group is graphgen's groups
            at["groups"] = int(at.pop("group"))
        has_bias = len(ins) > 2 and ins[2]
        y = self.emit(
            "conv",
            [self.value(ins[0]), self.value(ins[1])],
            out if not has_bias else f"{out}/conv",
            **at,
        )
        if has_bias:
            nd = len(self.shape[y]) - 2
            b = self.value(ins[2])
            m = self.shape_of(b)
            b = self.emit("reshape", [b], f"{out}/bias", shape=[*m, *([1] * nd)])
            y = self.emit("add", [y, b], out)
        return y

    def op_MaxPool(self, node, ins, attrs):
        if len(node.output) > 1 and self.used(node.output[1]):
            raise Unsupported("its Indices output is used")
        at = self._spatial_attrs(
            attrs,
            ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
        )
        return self.emit("max_pool", [self.value(ins[0])], node.output[0], **at)

    def op_AveragePool(self, node, ins, attrs):
        at = self._spatial_attrs(
            attrs,
            (
                "kernel_shape",
                "strides",
                "pads",
                "dilations",
                "ceil_mode",
                "count_include_pad",
                "auto_pad",
            ),
        )
        return self.emit("avg_pool", [self.value(ins[0])], node.output[0], **at)

    def _global(graphgen_op):
        def handler(self, node, ins, attrs):
            x = self.value(ins[0])
            axes = list(range(2, len(self.shape[x])))
            return self.emit(graphgen_op, [x], node.output[0], axis=axes, keepdims=True)

        return handler

    op_GlobalAveragePool = _global("mean")
    op_GlobalMaxPool = _global("max")

    def op_BatchNormalization(self, node, ins, attrs):
        out = node.output[0]
        eps = float(attrs.get("epsilon", 1e-5))
        if attrs.get("spatial", 1) != 1:
            raise Unsupported("spatial=0")
        training = bool(attrs.get("training_mode", 0)) if self.opset >= 14 else False
        if self.opset < 7 and not attrs.get("is_test", 0):
            training = True
        extra = [o for o in node.output[1:] if self.used(o)]
        if not training:
            if extra:
                raise Unsupported("it has extra outputs in inference mode")
            return self.emit(
                "batch_norm", [self.value(i) for i in ins[:5]], out, epsilon=eps
            )
        x = self.value(ins[0])
        y = self.emit(
            "batch_norm_train",
            [x, self.value(ins[1]), self.value(ins[2])],
            out,
            epsilon=eps,
        )
        if any(self.used(o) for o in node.output[3:]):
            raise Unsupported("saved mean/var outputs")
        results = [y]
        if extra:
            momentum = float(attrs.get("momentum", 0.9))
            axes = [a for a in range(len(self.shape[x])) if a != 1]
            mean = self.emit("mean", [x], f"{out}/batch_mean", axis=axes)
            c = len(self.shape[x]) - 2
            centred = self.emit(
                "sub",
                [
                    x,
                    self.emit("reshape", [mean], f"{out}/mean_b", shape=[-1] + [1] * c),
                ],
                f"{out}/centred",
            )
            var = self.emit(
                "mean",
                [self.emit("square", [centred], f"{out}/centred2")],
                f"{out}/batch_var",
                axis=axes,
            )
            for stat_in, batch, name in (
                (ins[3], mean, node.output[1]),
                (ins[4], var, node.output[2] if len(node.output) > 2 else ""),
            ):
                if not self.used(name):
                    results.append(None)
                    continue
                old = self.emit("mul", [self.value(stat_in), momentum], f"{name}/old")
                new = self.emit("mul", [batch, 1.0 - momentum], f"{name}/new")
                results.append(self.emit("add", [old, new], name))
        return results

    def op_LayerNormalization(self, node, ins, attrs):
        x = self.value(ins[0])
        bias = self.value(ins[2]) if len(ins) > 2 and ins[2] else 0.0
        axis = int(attrs.get("axis", -1))
        eps = float(attrs.get("epsilon", 1e-5))
        y = self.emit(
            "layer_norm",
            [x, self.value(ins[1]), bias],
            node.output[0],
            axis=axis,
            epsilon=eps,
        )
        results = [y]
        extra = [o if self.used(o) else "" for o in node.output[1:]]
        if any(extra):  # Mean and InvStdDev over the normalized axes, kept as size 1
            nd = len(self.shape[x])
            axes = list(range(axis % nd, nd))
            out = node.output[0]
            mean = self.emit(
                "mean", [x], extra[0] or f"{out}/mean", axis=axes, keepdims=True
            )
            centred = self.emit("sub", [x, mean], f"{out}/centred")
            var = self.emit(
                "mean",
                [self.emit("square", [centred], f"{out}/centred2")],
                f"{out}/var",
                axis=axes,
                keepdims=True,
            )
            std = self.emit(
                "sqrt", [self.emit("add", [var, eps], f"{out}/var_eps")], f"{out}/std"
            )
            results.append(mean if extra[0] else None)
            if len(extra) > 1 and extra[1]:
                results.append(self.emit("div", [1.0, std], extra[1]))
        return results

    def op_LRN(self, node, ins, attrs):
        return self.emit(
            "lrn",
            [self.value(ins[0])],
            node.output[0],
            size=int(attrs["size"]),
            alpha=float(attrs.get("alpha", 1e-4)),
            beta=float(attrs.get("beta", 0.75)),
            bias=float(attrs.get("bias", 1.0)),
        )

    def _softmax(graphgen_op, probabilities=False):
        """``probabilities``: the op's output is a softmax, whose logits
        ``--loss softmax_cross_entropy`` takes instead."""

        def handler(self, node, ins, attrs):
            out = node.output[0]
            x = self.value(ins[0])
            shape = self.shape[x]
            nd = len(shape)
            axis = int(attrs.get("axis", 1 if self.opset < 13 else -1))
            axis = axis + nd if axis < 0 else axis
            if self.opset >= 13 or axis == nd - 1:
                y = self.emit(graphgen_op, [x], out, axis=axis)
            else:  # opsets < 13: softmax of the input coerced to 2-D at axis
                flat = self.emit(
                    "reshape",
                    [x],
                    f"{out}/2d",
                    shape=[dims.prod(shape[:axis]), dims.prod(shape[axis:])],
                )
                s = self.emit(graphgen_op, [flat], f"{out}/softmax2d", axis=1)
                y = self.emit("reshape", [s], out, shape=list(shape))
            if probabilities and nd == 2 and axis == nd - 1:
                self.softmax_of[y] = x
            return y

        return handler

    op_Softmax = _softmax("softmax", probabilities=True)
    op_LogSoftmax = _softmax("log_softmax")

    def op_Concat(self, node, ins, attrs):
        args = [self.value(i) for i in ins]
        if len(args) == 1:
            return args[0]
        return self.emit("concat", args, node.output[0], axis=int(attrs["axis"]))

    def op_Split(self, node, ins, attrs):
        x = self.value(ins[0])
        shape = self.shape[x]
        axis = int(attrs.get("axis", 0))
        axis = axis + len(shape) if axis < 0 else axis
        size = shape[axis]
        if not isinstance(size, int):
            raise Unsupported("splitting a symbolic axis")
        outs = [o for o in node.output]
        if self.opset >= 13 and len(ins) > 1 and ins[1]:
            split = [int(s) for s in self.need_const(ins[1], "split")]
        elif "split" in attrs:
            split = [int(s) for s in attrs["split"]]
        else:
            n = int(attrs.get("num_outputs", len(outs)))
            step = -(-size // n)
            split = [min(step, size - k * step) for k in range(n)]
        if sum(split) != size or len(split) != len(outs):
            raise Unsupported(f"split {split} does not fit size {size}")
        results, start = [], 0
        for name, s in zip(outs, split):
            results.append(
                self.emit(
                    "slice", [x], name or None, axis=axis, start=start, stop=start + s
                )
                if name
                else None
            )
            start += s
        return results

    def _reshape_to(self, x, shape, out):
        return self.emit("reshape", [x], out, shape=list(shape))

    def op_Reshape(self, node, ins, attrs):
        x = self.value(ins[0])
        target = (
            list(attrs["shape"])
            if self.opset < 5
            else [int(s) for s in self.need_const(ins[1], "shape")]
        )
        have = self.shape[x]
        allowzero = attrs.get("allowzero", 0)
        shape = []
        for i, s in enumerate(target):
            if s == 0 and not allowzero:
                shape.append(have[i])
            else:
                shape.append(int(s))
        return self._reshape_to(x, shape, node.output[0])

    def op_Flatten(self, node, ins, attrs):
        x = self.value(ins[0])
        shape = self.shape[x]
        axis = int(attrs.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        return self._reshape_to(
            x, [dims.prod(shape[:axis]), dims.prod(shape[axis:])], node.output[0]
        )

    def op_Transpose(self, node, ins, attrs):
        x = self.value(ins[0])
        perm = attrs.get("perm")
        at = {"perm": [int(p) for p in perm]} if perm is not None else {}
        return self.emit("transpose", [x], node.output[0], **at)

    def _axes(self, ins, attrs, since):
        if self.opset >= since:
            if len(ins) > 1 and ins[1]:
                return [int(a) for a in self.need_const(ins[1], "axes")]
            return None
        return [int(a) for a in attrs["axes"]] if "axes" in attrs else None

    def op_Squeeze(self, node, ins, attrs):
        x = self.value(ins[0])
        shape = self.shape[x]
        axes = self._axes(ins, attrs, 13)
        if axes is None:
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = {a + len(shape) if a < 0 else a for a in axes}
        if any(shape[a] != 1 for a in axes):
            raise Unsupported(f"squeezing an axis of size other than 1 ({shape})")
        return self._reshape_to(
            x, [d for i, d in enumerate(shape) if i not in axes], node.output[0]
        )

    def op_Unsqueeze(self, node, ins, attrs):
        x = self.value(ins[0])
        shape = list(self.shape[x])
        axes = self._axes(ins, attrs, 13)
        if axes is None:
            raise Unsupported("Unsqueeze without axes")
        nd = len(shape) + len(axes)
        axes = sorted(a + nd if a < 0 else a for a in axes)
        for a in axes:
            shape.insert(a, 1)
        return self._reshape_to(x, shape, node.output[0])

    def op_Pad(self, node, ins, attrs):
        mode = _s(attrs.get("mode", "constant"))
        if mode != "constant":
            raise Unsupported(f"mode {mode!r} (only 'constant')")
        x = self.value(ins[0])
        nd = len(self.shape[x])
        if self.opset < 11:
            pads = [int(p) for p in attrs["pads"]]
            value = float(attrs.get("value", 0.0))
        else:
            pads = [int(p) for p in self.need_const(ins[1], "pads")]
            value = (
                float(self.need_const(ins[2], "constant_value"))
                if len(ins) > 2 and ins[2]
                else 0.0
            )
            if len(ins) > 3 and ins[3]:
                axes = [int(a) % nd for a in self.need_const(ins[3], "axes")]
                full = [0] * (2 * nd)
                k = len(axes)
                for j, a in enumerate(axes):
                    full[a], full[a + nd] = pads[j], pads[j + k]
                pads = full
        return self.emit("pad", [x], node.output[0], pads=pads, value=value)

    def _reduce(graphgen_op, since):
        def handler(self, node, ins, attrs):
            x = self.value(ins[0])
            axes = self._axes(ins, attrs, since)
            keepdims = bool(attrs.get("keepdims", 1))
            if not axes:
                if attrs.get("noop_with_empty_axes", 0):
                    return x
                axes = None
            return self.emit(
                graphgen_op, [x], node.output[0], axis=axes, keepdims=keepdims
            )

        return handler

    op_ReduceMean = _reduce("mean", 18)
    op_ReduceLogSumExp = _reduce("logsumexp", 18)

    def op_ReduceSumSquare(self, node, ins, attrs):
        x = self.value(ins[0])
        sq = self.emit("square", [x], f"{node.output[0]}/square")
        axes = self._axes(ins, attrs, 18)
        keepdims = bool(attrs.get("keepdims", 1))
        if not axes and attrs.get("noop_with_empty_axes", 0):
            return sq
        return self.emit(
            "sum", [sq], node.output[0], axis=axes or None, keepdims=keepdims
        )

    op_ReduceSum = _reduce("sum", 13)
    op_ReduceMax = _reduce("max", 18)

    def op_Constant(self, node, ins, attrs):
        onnx = self.onnx
        if "value" in attrs:
            v = onnx.numpy_helper.to_array(attrs["value"])
        elif "value_float" in attrs:
            v = np.asarray(attrs["value_float"], dtype=np.float32)
        elif "value_floats" in attrs:
            v = np.asarray(attrs["value_floats"], dtype=np.float32)
        elif "value_int" in attrs:
            v = np.asarray(attrs["value_int"], dtype=np.int64)
        elif "value_ints" in attrs:
            v = np.asarray(attrs["value_ints"], dtype=np.int64)
        else:
            raise Unsupported(f"attribute {sorted(attrs)} (sparse or string constants)")
        self.t[node.output[0]] = ("const", v)

    def op_ConstantOfShape(self, node, ins, attrs):
        shape = [int(s) for s in self.need_const(ins[0], "its shape")]
        v = attrs.get("value")
        value = (
            self.onnx.numpy_helper.to_array(v).reshape(-1)
            if v is not None
            else np.zeros(1, np.float32)
        )
        out = node.output[0]
        if value.dtype.kind != "f":
            self.t[out] = ("const", np.full(shape, value[0], dtype=value.dtype))
            return None
        if out in self.freeze:
            return self.emit("constant", [], out, shape=shape, fill=float(value[0]))
        self.add_param(out, shape, float(value[0]))
        return out

    def op_Shape(self, node, ins, attrs):
        shape = self.dims_of(ins[0])
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        part = shape[start : int(end) if end is not None else None]
        if not all(isinstance(d, int) for d in part):
            raise Unsupported("the shape has symbolic sizes (known only at run time)")
        self.t[node.output[0]] = ("const", np.asarray(part, dtype=np.int64))

    def op_Gather(self, node, ins, attrs):
        axis = int(attrs.get("axis", 0))
        data = self.value(ins[0])
        kind, idx = self.t[ins[1]]
        if kind == "node":
            if idx not in self.is_int:
                raise Unsupported("indices must be int64")
            return self.emit("gather", [data, idx], node.output[0], axis=axis)
        idx = np.asarray(idx)
        shape = self.shape[data]
        axis = axis + len(shape) if axis < 0 else axis
        size = shape[axis]
        if idx.ndim == 0:
            i = int(idx) % size if isinstance(size, int) else int(idx)
            s = self.emit(
                "slice",
                [data],
                f"{node.output[0]}/slice",
                axis=axis,
                start=i,
                stop=i + 1,
            )
            return self._reshape_to(
                s, [d for k, d in enumerate(shape) if k != axis], node.output[0]
            )
        flat = idx.reshape(-1)
        if flat.size and np.all(np.diff(flat) == 1) and idx.ndim == 1:
            return self.emit(
                "slice",
                [data],
                node.output[0],
                axis=axis,
                start=int(flat[0]),
                stop=int(flat[-1]) + 1,
            )
        raise Unsupported("constant indices that are not a contiguous range")

    def op_Slice(self, node, ins, attrs):
        x = self.value(ins[0])
        shape = self.shape[x]
        if self.opset < 10:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = [int(v) for v in self.need_const(ins[1], "starts")]
            ends = [int(v) for v in self.need_const(ins[2], "ends")]
            axes = (
                [int(v) for v in self.need_const(ins[3], "axes")]
                if len(ins) > 3 and ins[3]
                else list(range(len(starts)))
            )
            steps = (
                [int(v) for v in self.need_const(ins[4], "steps")]
                if len(ins) > 4 and ins[4]
                else [1] * len(starts)
            )
        out = x
        todo = list(zip(axes, starts, ends, steps))
        for k, (axis, start, end, step) in enumerate(todo):
            axis %= len(shape)
            if step < 1:
                raise Unsupported("negative steps")
            size = shape[axis]
            if isinstance(size, int):
                start, end, step = slice(start, end, step).indices(size)
                if start == 0 and end >= size and step == 1:
                    continue  # the whole axis
            name = node.output[0] if k == len(todo) - 1 else f"{node.output[0]}/{k}"
            out = self.emit(
                "slice", [out], name, axis=axis, start=start, stop=end, step=step
            )
        return out

    def op_Size(self, node, ins, attrs):
        shape = self.dims_of(ins[0])
        if not all(isinstance(d, int) for d in shape):
            raise Unsupported("the size is symbolic (known only at run time)")
        self.t[node.output[0]] = ("const", np.asarray(int(np.prod(shape)), np.int64))

    def op_CastLike(self, node, ins, attrs):
        kind, target = self.t[ins[1]]
        is_float = (
            target not in self.is_int
            if kind == "node"
            else np.asarray(target).dtype.kind == "f"
        )
        if (
            not is_float
            or self.t[ins[0]][0] == "node"
            and self.t[ins[0]][1] in self.is_int
        ):
            raise Unsupported("casts other than float to float")
        return self.value(ins[0])

    def op_Cast(self, node, ins, attrs):
        _, v = self.t[ins[0]]
        to = attrs.get("to")
        floats = (
            self.onnx.TensorProto.FLOAT,
            self.onnx.TensorProto.DOUBLE,
            self.onnx.TensorProto.FLOAT16,
        )
        if v in self.is_int or to not in floats:
            raise Unsupported("casts other than float to float")
        return v


# Ops whose handlers deal with known inputs themselves (weights, not shapes).
NO_FOLD = {"ConstantOfShape", "Constant", "Shape", "Size"}


def _ident(name):
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def to_spec(
    model,
    *,
    source="<onnx>",
    loss=None,
    labels=None,
    freeze=(),
    dtype=None,
    constants=None,
    vjp=True,
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
        try:
            model = onnx.load(source)
        except Exception as e:  # noqa: BLE001 - protobuf raises many kinds
            raise SpecError(f"cannot read ONNX model: {e}", source=source) from None
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    imp = Importer(model, source, freeze=freeze, constants=constants)
    outputs = imp.run()
    first_type = next(
        (
            i.type.tensor_type.elem_type
            for i in model.graph.input
            if i.name in imp.inputs and i.name not in imp.is_int
        ),
        None,
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
                f"--loss needs a model with one output, this one has {len(outputs)}",
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
