"""Transformer training step: graphgen's NumPy and Numba modules against PyTorch eager
and onnxruntime-training.

    python benchmarks/transformer_bench.py            # GPT-2-small shape + small models
    python benchmarks/transformer_bench.py --small    # a quicker decoder shape
    python benchmarks/transformer_bench.py --profile  # also profile one NumPy step
    python benchmarks/transformer_bench.py --ort-training-python ~/ortt/bin/python

Issue 15's targets. A nanoGPT-style decoder (tests/transformer_models.py: causal mask
kept as a buffer, tied embeddings) is built in PyTorch at the GPT-2-small-like shape
(6 layers, width 384, 6 heads, context 128, vocab 4096, batch 8), exported with
``torch.onnx.export(dynamo=False, opset_version=17)`` and compiled by graphgen with a
softmax cross-entropy loss. One training step (loss + every parameter's gradient) is
timed for the generated NumPy module, the generated Numba module, PyTorch eager on the
model that was exported and, when given, onnxruntime-training's artifacts of the same
ONNX file; forward alone for graphgen, PyTorch and onnxruntime. The small validation
models of tests/transformer_models.py (nanoGPT, ``nn.TransformerEncoder``, and GPT-2
from ``transformers`` when installed, which needs the dynamo exporter; width 32,
2 layers, batch 8) are timed the same way, their Numba modules compiled with
``whole=True`` (one compiled function each, "graphgen numba (whole)"; its first call
compiles ~5x longer than the default's, printed with the model); the decoder's Numba
module is compiled in the default mode. Losses are checked against PyTorch's before
anything is timed.

**One process per implementation.** Each implementation runs in its own worker process
(this script with ``--worker KIND``), so BLAS, OpenMP and allocator state never mix:
timing them in one process gave ratios from 1.0× to 14× on the same code. The workers
take turns: the parent asks one worker at a time to time its function for ``--min``
seconds, round after round, so a shared machine's drift slows all alike, and reports
medians over rounds. A ratio is the median over rounds of the two step times of one
round, printed with its range over rounds, so drift between rounds cancels. Each
process has 2 threads (BLAS, OpenMP, Numba, PyTorch, ORT); idle thread pools sleep
(``OMP_WAIT_POLICY=PASSIVE``, no ORT spinning).

**Peak memory** of a step is measured in its worker: freed heap is handed back
(``malloc_trim``), the resident size is read, the kernel's peak counter is reset
(``/proc/self/clear_refs``), one step runs, and the peak resident size above the resting
size is reported (parameters, optimizer state and the module itself are resting; the
returned gradients and everything the step allocates are counted).

**The GEMM floor** of the decoder's step: every matrix product of the generated
``value_and_grad`` (the matmul nodes of the module's compiled graph, forward and
backward, with their operand shapes, dtype and which operands are transposed views), run
alone through NumPy's BLAS (what the generated modules call) in one worker and through
``torch.matmul`` (PyTorch's own GEMM library, named from ``torch.__config__.show()``) in
another, timed in turn with the rest. Its ratio to PyTorch's step is the time no
generated module can go below with that BLAS; the two rows side by side tell GEMM
library speed apart from the module's overhead.

**onnxruntime-training** cannot be installed beside ``onnxruntime`` (both provide the
``onnxruntime`` package), and its Python package imports PyTorch. Give it its own
environment and pass that interpreter::

    python3 -m venv ~/ortt
    ~/ortt/bin/pip install onnxruntime-training==1.19.2 onnx numpy torch==2.13.0
    python benchmarks/transformer_bench.py --ort-training-python ~/ortt/bin/python

Its worker names the two optional outputs of every ``LayerNormalization`` (the artifact
generator needs them), reshapes the logits to (tokens, vocab) for its
``SoftmaxCrossEntropyLoss``, generates the training artifacts with every float
initializer trainable, and times ``Module.__call__`` in training mode (forward and
backward, gradients accumulated; no optimizer step) followed by ``lazy_reset_grad``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE), str(REPO / "tests")]

THREADS = "2"
ENV = {
    "OMP_NUM_THREADS": THREADS,
    "OPENBLAS_NUM_THREADS": THREADS,
    "MKL_NUM_THREADS": THREADS,
    "NUMBA_NUM_THREADS": THREADS,
    # idle thread pools sleep instead of spinning while another worker runs
    "OMP_WAIT_POLICY": "PASSIVE",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "PYTHONHASHSEED": "0",
}
FULL = {"LAYERS": 6, "WIDTH": 384, "HEADS": 6, "CONTEXT": 128, "VOCAB": 4096}
SMALL = {"LAYERS": 2, "WIDTH": 128, "HEADS": 4, "CONTEXT": 64, "VOCAB": 1024}
TINY = {"LAYERS": 2, "WIDTH": 32, "HEADS": 4, "CONTEXT": 16, "VOCAB": 50}
BATCH = 8
LABELS = {
    "torch": "PyTorch eager",
    "numpy": "graphgen numpy",
    "numba": "graphgen numba",
    "numba_whole": "graphgen numba (whole)",
    "ort": "onnxruntime",
    "ortt": "onnxruntime-training",
    "gemm_numpy": "GEMM floor: NumPy's BLAS",
    "gemm_torch": "GEMM floor: torch.matmul",
}


# --------------------------------------------------------------------------- workers
# Each function below runs inside a worker process and returns (fns, info): the
# callables to time by pass ("step", "forward") and facts for the report.


def setup_torch(workdir, name, dims, seq, dynamo):
    """Build model ``name`` in PyTorch, export it to ONNX, save the inputs."""
    import warnings

    import numpy as np
    import torch
    import transformer_models as tm

    torch.set_num_threads(int(THREADS))
    for k, v in dims.items():
        setattr(tm, k, v)
    tm.BATCH, tm.T = BATCH, seq
    _, models = tm._torch()
    torch.manual_seed(0)
    model = models[name]().eval()  # no dropout: the exported graph has none
    with torch.no_grad():
        for pname, p in model.named_parameters():
            norm = ("norm" in pname or "ln_" in pname) and pname.endswith("weight")
            p.copy_((1.0 if norm else 0.0) + 0.02 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tm.VOCAB, size=(BATCH, seq))
    labels = rng.integers(0, tm.VOCAB, size=(BATCH, seq))
    x, y = torch.tensor(ids), torch.tensor(labels)
    path = os.path.join(workdir, f"{name}.onnx")
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the tracer's notes on Python-level shape math
        warnings.simplefilter("ignore")
        kw = (
            {"dynamo": True, "optimize": True}
            if dynamo
            else {"dynamo": False, "opset_version": 17}
        )
        torch.onnx.export(
            model, (x,), path, input_names=["idx"], output_names=["logits"], **kw
        )
    export_s = time.perf_counter() - t0
    params = list(model.parameters())
    vocab = tm.VOCAB

    def step():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(
            model(x).reshape(-1, vocab), y.reshape(-1)
        )
        loss.backward()
        return loss.item()

    def forward():
        with torch.no_grad():
            return model(x)

    loss = step()
    np.savez(
        os.path.join(workdir, f"{name}.inputs.npz"),
        idx=ids,
        labels=labels,
        logits=forward().numpy(),
    )
    info = {
        "loss": loss,
        "params": sum(p.numel() for p in params),
        "export_s": export_s,
        "version": torch.__version__,
        "blas": torch_blas(),
    }
    return {"step": step, "forward": forward}, info


def torch_blas():
    """PyTorch's GEMM libraries, from ``torch.__config__.show()``: the BLAS it was built
    with (``BLAS_INFO``), MKL's and oneDNN's (MKL-DNN) versions, its CPU capability."""
    import re

    import torch

    text = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", text)
    parts = [f"BLAS_INFO={blas.group(1) if blas else '?'}"]
    for pattern in (
        r"Math Kernel Library Version ([\w.\-]+)",
        r"MKL-DNN (v[\w.]+)",
        r"CPU capability usage: (\w+)",
    ):
        m = re.search(pattern, text)
        if m:
            parts.append(
                pattern.split(" ")[0].replace("Math", "MKL") + " " + m.group(1)
            )
    return ", ".join(parts)


# ------------------------------------------------------------------------ GEMM floor


def gemm_list(workdir, name):
    """Every matrix product ``value_and_grad`` computes: the matmul nodes of the NumPy
    module's compiled graph (statements and folded temporaries), each as its operands'
    shapes and transpositions (``perm`` when the operand is a transposed view), counted
    from the graph, not listed by hand. Written to ``gemms.json`` for the other
    worker."""
    import graphgen
    from graphgen import api
    from graphgen import graph as g
    from graphgen.backends.numpy.program import NumpyProgram

    path = os.path.join(workdir, f"{name}.onnx")
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    program = NumpyProgram(api.lower(G), "numpy", name)
    program.context()
    A = program.A
    prog, _, inlined = program.programs["value_and_grad"]
    gemms = []
    for n, _ in prog:
        for m in (n, *inlined[n]):
            if A.nodes[m][g.OP] != "matmul":
                continue
            args = []
            for p in g.operands(A, m):
                a = A.nodes[p]
                perm = a[g.ATTRS].get("perm") if a.get(g.OP) == "transpose" else None
                args.append({"shape": list(a[g.SHAPE]), "perm": perm})
            gemms.append({"args": args, "dtype": A.nodes[m][g.DTYPE]})
    with open(os.path.join(workdir, "gemms.json"), "w") as f:
        json.dump(gemms, f)
    return gemms


def _flops(gemms):
    """Floating-point operations of the GEMMs: 2·M·K·N per product of the batch."""
    import math

    import numpy as np

    total = 0
    for gm in gemms:
        a, b = (x["shape"] for x in gm["args"])
        a = a if len(a) > 1 else [1, *a]
        b = b if len(b) > 1 else [*b, 1]
        batch = math.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
        total += 2 * batch * a[-2] * a[-1] * b[-1]
    return total


def setup_gemm_numpy(workdir, name, **_):
    """The GEMM floor through NumPy's BLAS (``np.matmul`` in the forms of the generated
    code: a stack of matrices times a matrix as one product over all rows)."""
    import numpy as np

    gemms = gemm_list(workdir, name)
    rng = np.random.default_rng(0)

    def operand(spec, dtype):
        shape, perm = spec["shape"], spec["perm"]
        if perm is None:
            return rng.standard_normal(shape).astype(dtype)
        base = [0] * len(shape)
        for i, axis in enumerate(perm):
            base[axis] = shape[i]
        return np.transpose(rng.standard_normal(base).astype(dtype), perm)

    pairs = [tuple(operand(x, gm["dtype"]) for x in gm["args"]) for gm in gemms]

    def step():
        for a, b in pairs:
            if a.ndim >= 3 and b.ndim == 2:  # the module's one product over all rows
                np.matmul(a.reshape(-1, a.shape[-1]), b)
            else:
                np.matmul(a, b)

    info = {"gemms": len(gemms), "flops": _flops(gemms), "blas": numpy_blas()}
    return {"step": step}, info


def setup_gemm_torch(workdir, name, **_):
    """The same GEMMs through ``torch.matmul`` (PyTorch's GEMM library)."""
    import torch

    torch.set_num_threads(int(THREADS))
    with open(os.path.join(workdir, "gemms.json")) as f:
        gemms = json.load(f)
    gen = torch.Generator().manual_seed(0)

    def operand(spec, dtype):
        shape, perm = spec["shape"], spec["perm"]
        dt = getattr(torch, dtype)
        if perm is None:
            return torch.randn(shape, generator=gen, dtype=dt)
        base = [0] * len(shape)
        for i, axis in enumerate(perm):
            base[axis] = shape[i]
        return torch.randn(base, generator=gen, dtype=dt).permute(*perm)

    pairs = [tuple(operand(x, gm["dtype"]) for x in gm["args"]) for gm in gemms]

    def step():
        with torch.no_grad():
            for a, b in pairs:
                torch.matmul(a, b)

    return {"step": step}, {"gemms": len(gemms), "blas": torch_blas()}


def numpy_blas():
    import numpy as np

    blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
    return f"{blas.get('name')} {blas.get('version', '')}".strip()


def _inputs(workdir, name):
    import numpy as np

    z = np.load(os.path.join(workdir, f"{name}.inputs.npz"))
    return z["idx"], z["labels"], z["logits"]


def setup_graphgen(backend):
    def setup(workdir, name, whole=False, **_):
        import graphgen

        # whole=True: the Numba module as one compiled function per generated function
        options = {"whole": True} if whole and backend == "numba" else {}
        path = os.path.join(workdir, f"{name}.onnx")
        ids, labels, _ = _inputs(workdir, name)
        t0 = time.perf_counter()
        G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mod = graphgen.compile(G, backend=backend, **options)
        gen_s = time.perf_counter() - t0
        arrays = {"idx": ids, "labels": labels, **mod.init_params()}
        t0 = time.perf_counter()
        loss = float(mod.value_and_grad(**arrays)[0])
        first_s = time.perf_counter() - t0
        fG = graphgen.load(path, vjp=False)
        fmod = graphgen.compile(fG, backend=backend, **options)
        fwd_arrays = {"idx": ids, **fmod.init_params()}
        info = {"loss": loss, "load_s": load_s, "gen_s": gen_s, "first_s": first_s}
        fns = {
            "step": lambda: mod.value_and_grad(**arrays),
            "forward": lambda: fmod.forward(**fwd_arrays),
        }
        return fns, info

    return setup


def _ort_options(ort):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(THREADS)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def setup_ort(workdir, name, **_):
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    ids, _, want = _inputs(workdir, name)
    path = os.path.join(workdir, f"{name}.onnx")
    sess = ort.InferenceSession(path, _ort_options(ort), ["CPUExecutionProvider"])
    feed = {"idx": ids.astype(np.int64)}
    got = sess.run(None, feed)[0]
    err = float(np.abs(got - want).max() / np.abs(want).max())
    return {"forward": lambda: sess.run(None, feed)}, {"logits_err": err}


def setup_ort_training(workdir, name, **_):
    """onnxruntime-training's artifacts for the exported model (its own environment)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.training import api, artifacts

    ort.set_default_logger_severity(3)
    ids, labels, _ = _inputs(workdir, name)
    model = onnx.load(os.path.join(workdir, f"{name}.onnx"))
    g = model.graph
    for node in g.node:  # the artifact generator needs these optional outputs named
        if node.op_type == "LayerNormalization":
            while len(node.output) < 3:
                node.output.append(f"{node.output[0]}__bench_ln{len(node.output)}")
    out = g.output[0]
    vocab = out.type.tensor_type.shape.dim[-1].dim_value
    flat = ids.size
    g.initializer.append(
        numpy_helper.from_array(np.array([flat, vocab], np.int64), "bench__flat")
    )
    g.node.append(helper.make_node("Reshape", [out.name, "bench__flat"], ["flat"]))
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info("flat", TensorProto.FLOAT, [flat, vocab])
    )
    trainable = [
        t.name for t in g.initializer if t.data_type == TensorProto.FLOAT and t.dims
    ]
    art = os.path.join(workdir, f"{name}.ortt")
    os.makedirs(art, exist_ok=True)
    t0 = time.perf_counter()
    artifacts.generate_artifacts(
        model,
        requires_grad=trainable,
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=art,
    )
    state = api.CheckpointState.load_checkpoint(os.path.join(art, "checkpoint"))
    module = api.Module(
        os.path.join(art, "training_model.onnx"),
        state,
        session_options=_ort_options(ort),
    )
    module.train()
    x, y = ids.astype(np.int64), labels.reshape(-1).astype(np.int64)
    gen_s = time.perf_counter() - t0

    def step():
        loss = module(x, y)
        module.lazy_reset_grad()
        return loss

    t0 = time.perf_counter()
    loss = float(step())
    first_s = time.perf_counter() - t0
    info = {
        "loss": loss,
        "gen_s": gen_s,
        "first_s": first_s,
        "version": ort.__version__,
    }
    return {"step": step}, info


SETUPS = {
    "torch": setup_torch,
    "numpy": setup_graphgen("numpy"),
    "numba": setup_graphgen("numba"),
    "ort": setup_ort,
    "ortt": setup_ort_training,
    "gemm_numpy": setup_gemm_numpy,
    "gemm_torch": setup_gemm_torch,
}


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(f):
    """Peak resident bytes one call of ``f`` adds above the resting process."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the resting size keeps freed heap
        pass
    rest = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f_refs:
        f_refs.write("5")  # reset VmHWM to the current resident size
    f()
    return _status("VmHWM") - rest


def time_calls(f, min_s):
    """Seconds per call of ``f``, averaged over at least ``min_s`` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def serve(kind):
    """A worker: answer one JSON request per line on stdin, on the original stdout."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what libraries print goes to stderr, not into the protocol
    fns = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            cmd = msg["cmd"]
            if cmd == "setup":
                fns, reply = SETUPS[kind](**msg["args"])
                for f in fns.values():
                    f()  # warm-up
            elif cmd == "time":
                reply = {"s": time_calls(fns[msg["what"]], msg["min"])}
            elif cmd == "peak":
                reply = {"bytes": peak_bytes(fns["step"])}
            elif cmd == "profile":
                profile(fns["step"], msg["top"])
                reply = {}
            else:
                break
        except Exception as e:  # noqa: BLE001 - reported by the parent, per row
            reply = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, kind, python=sys.executable):
        self.kind = kind
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV},
        )

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker exited ({self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.kind}: {reply['error']}")
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


# ---------------------------------------------------------------------- the parent


def bench(name, label, dims, seq, args, rows, workdir):
    """Time model ``name`` at ``dims``: one worker per implementation, taking turns.
    The small models' Numba modules are compiled with ``whole=True``."""
    dynamo = name in ("gpt2", "llama")  # transformers' models need dynamo
    whole = not label.startswith("decoder")
    labels = {**LABELS, "numba": LABELS["numba_whole" if whole else "numba"]}
    setup = {"workdir": workdir, "name": name, "dims": dims, "seq": seq}
    workers = {"torch": Worker("torch")}
    try:
        info = {
            "torch": workers["torch"].ask(cmd="setup", args={**setup, "dynamo": dynamo})
        }
        kinds = ["numpy", "numba", "ort"]
        if args.ort_training_python:
            kinds.append("ortt")
        if label.startswith("decoder") and not args.no_floor:
            kinds += ["gemm_numpy", "gemm_torch"]  # gemm_torch reads gemm_numpy's list
        for kind in kinds:
            python = args.ort_training_python if kind == "ortt" else sys.executable
            workers[kind] = Worker(kind, python)
            try:
                info[kind] = workers[kind].ask(
                    cmd="setup", args={**setup, "whole": whole}
                )
            except RuntimeError as e:
                print(f"{label}: {labels[kind]} failed: {e}", flush=True)
                workers.pop(kind).close()
        ref = info["torch"]["loss"]
        for kind in ("numpy", "numba", "ortt"):
            got = info.get(kind, {}).get("loss")
            if got is not None and abs(got - ref) > 1e-4 * abs(ref):
                raise SystemExit(f"{name}: {kind} loss {got} != PyTorch's {ref}")
        facts = [
            f"{info['torch']['params']:,} parameters",
            f"loss {ref:.5f} (PyTorch)",
            f"PyTorch {info['torch']['version']}: {info['torch']['blas']}",
        ]
        for kind in ("numpy", "numba"):
            if kind in info:
                i = info[kind]
                facts.append(
                    f"{labels[kind]}: import {i['load_s']:.1f} s, "
                    f"generate {i['gen_s']:.1f} s, "
                    f"first call {i['first_s']:.1f} s"
                )
        if "ortt" in info:
            i = info["ortt"]
            facts.append(
                f"onnxruntime-training {i['version']}: artifacts and session "
                f"{i['gen_s']:.1f} s, first call {i['first_s']:.1f} s"
            )
        if "ort" in info:
            facts.append(f"onnxruntime logits rel. err {info['ort']['logits_err']:.1e}")
        print(f"{label}: " + "; ".join(facts), flush=True)

        times = {(k, what): [] for k in workers for what in ("step", "forward")}
        for _ in range(args.rounds):
            for what in ("step", "forward"):
                for kind, w in workers.items():
                    if (kind, what) in PASSES:
                        s = w.ask(cmd="time", what=what, min=args.min)["s"]
                        times[kind, what].append(s)
        med = {key: statistics.median(v) for key, v in times.items() if v}
        peak = {
            kind: w.ask(cmd="peak")["bytes"]
            for kind, w in workers.items()
            if (kind, "step") in PASSES and kind in PEAKS
        }
        if args.profile and "numpy" in workers and not rows:
            workers["numpy"].ask(cmd="profile", top=12)
    finally:
        for w in workers.values():
            w.close()
    targets = args.targets(label)

    def ratio(kind, base):
        """The median over rounds of ``kind``'s step time over ``base``'s in the same
        round (a shared machine's drift between rounds cancels), and its range."""
        r = [a / b for a, b in zip(times[kind, "step"], times[base, "step"])]
        return statistics.median(r), min(r), max(r)

    def step_row(kind, t, peak_mb, note):
        has_ortt = ("ortt", "step") in med
        return (
            label,
            "train step",
            labels[kind],
            f"{t * 1e3:.1f}",
            "{:.2f} ({:.2f}–{:.2f})".format(*ratio(kind, "torch")),
            "{:.2f} ({:.2f}–{:.2f})".format(*ratio(kind, "ortt")) if has_ortt else "",
            peak_mb,
            note,
        )

    for kind in ("torch", "ortt", "numpy", "numba"):
        if (kind, "step") not in med:
            continue
        t = med[kind, "step"]
        marks = []
        for base, limit in targets.get(kind, {}).items():
            if (base, "step") in med:
                r = ratio(kind, base)[0]
                ok = "✓" if r <= limit else "✗"
                marks.append(f"≤ {limit}× {labels[base]} {ok}")
        rows.append(step_row(kind, t, f"{peak[kind] / 2**20:.1f}", "; ".join(marks)))
    for kind in ("gemm_numpy", "gemm_torch"):
        if (kind, "step") not in med:
            continue
        t, i = med[kind, "step"], info[kind]
        note = f"{i['gemms']} GEMMs of the step; {i['blas']}"
        if "flops" in i:
            note += (
                f"; {i['flops'] / 1e9:.2f} GFLOP, {i['flops'] / t / 1e9:.0f} GFLOP/s"
            )
        rows.append(step_row(kind, t, "", note))
    if ("ortt", "step") not in med:
        why = "no --ort-training-python" if not args.ort_training_python else "failed"
        rows.append((label, "train step", labels["ortt"], why, "", "", "", ""))
    for kind in ("ort", "torch", "numpy", "numba"):
        if (kind, "forward") not in med:
            continue
        r = med[kind, "forward"] / med["ort", "forward"]
        mark = ""
        if kind in ("numpy", "numba"):
            mark = f"≤ {FWD_TARGET}× onnxruntime " + ("✓" if r <= FWD_TARGET else "✗")
        rows.append(
            (
                label,
                "forward",
                labels[kind],
                f"{med[kind, 'forward'] * 1e3:.1f}",
                "",
                "",
                "",
                f"{r:.2f}× onnxruntime" + (f"; {mark}" if mark else ""),
            )
        )


PASSES = {
    ("torch", "step"),
    ("torch", "forward"),
    ("numpy", "step"),
    ("numpy", "forward"),
    ("numba", "step"),
    ("numba", "forward"),
    ("ort", "forward"),
    ("ortt", "step"),
    ("gemm_numpy", "step"),
    ("gemm_torch", "step"),
}
PEAKS = ("torch", "numpy", "numba", "ortt")  # the floor's rows have no peak
FWD_TARGET = 1.5  # forward, ratio to onnxruntime


def targets_for(big):
    """Issue 15's training-step targets: {implementation: {baseline: ratio}}."""

    def targets(label):
        if label.startswith("decoder") and big:
            return {"numba": {"torch": 1.0, "ortt": 1.2}, "numpy": {"torch": 1.5}}
        if label.startswith("decoder"):
            return {}
        return {"numba": {"ortt": 1.0}}

    return targets


def table(rows):
    lines = [
        (
            "| model | pass | implementation | ms | ÷ PyTorch | ÷ ORT-training "
            "| step peak MB | targets / notes |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


KINDS = [  # statement kinds of a generated module, first match wins
    ("matmul", (" @ ", "np.matmul", "np.dot", "np.einsum")),
    ("softmax / cross-entropy", ("_softmax", "_xent")),
    ("layer norm", ("_layer_norm",)),
    ("gather / scatter-add", ("_scatter_add", "np.take", ".at(")),
    ("reductions", (".sum(", "np.sum", ".mean(", "np.mean", "np.max")),
]


def profile(f, top):
    """Where one NumPy training step spends its time (printed by the numpy worker):
    cProfile by function, then the statements of ``value_and_grad`` (whose NumPy calls
    are inline expressions that cProfile books to the function itself), timed line by
    line with ``sys.settrace``."""
    import cProfile
    import linecache
    import pstats
    from collections import Counter

    prof = cProfile.Profile()
    prof.enable()
    f()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    print(f"\ncProfile of one NumPy training step ({total * 1e3:.0f} ms), by tottime:")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, func), (_, ncalls, tottime, _, _) in rows:
        where = func if file == "~" else f"{func} ({Path(file).name}:{line})"
        print(f"  {tottime * 1e3:8.1f} ms {100 * tottime / total:5.1f}%  {where}")

    spent, state = Counter(), {}

    def local(frame, event, arg):
        now = time.perf_counter()
        if "at" in state:
            spent[state["at"]] += now - state["t"]
        if event == "line":
            state["at"], state["t"] = (frame.f_code.co_filename, frame.f_lineno), now
        else:
            state.pop("at", None)
        return local

    def tracer(frame, event, arg):
        code = frame.f_code
        if code.co_name == "value_and_grad" and "graphgen_" in code.co_filename:
            return local
        return None

    sys.settrace(tracer)
    try:
        f()
    finally:
        sys.settrace(None)
    total = sum(spent.values())
    print(f"\nvalue_and_grad line by line ({total * 1e3:.0f} ms), slowest statements:")
    for (file, line), t in spent.most_common(top):
        text = linecache.getline(file, line).strip()
        if text.endswith(("(", "[", "=")):
            text += " " + linecache.getline(file, line + 1).strip()
        print(f"  {t * 1e3:8.1f} ms {100 * t / total:5.1f}%  {text[:110]}")
    kinds = Counter()
    for (file, line), t in spent.items():
        text = linecache.getline(file, line)
        kind = next((k for k, marks in KINDS if any(m in text for m in marks)), "other")
        kinds[kind] += t
    print(
        "  by kind: "
        + ", ".join(f"{k} {100 * t / total:.0f}%" for k, t in kinds.most_common()),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=sorted(SETUPS), help=argparse.SUPPRESS)
    p.add_argument("--small", action="store_true", help="a quicker decoder shape")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min", type=float, default=0.2, help="min seconds per round")
    p.add_argument(
        "--models",
        default="nanogpt,encoder,gpt2",
        help="small validation models to time ('' for none)",
    )
    p.add_argument("--no-decoder", action="store_true", help="small models only")
    p.add_argument("--profile", action="store_true", help="profile one NumPy step")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the decoder's GEMM floor rows"
    )
    p.add_argument(
        "--ort-training-python",
        default=os.environ.get("GRAPHGEN_ORT_TRAINING_PYTHON"),
        help="the Python of an environment with onnxruntime-training (see the top)",
    )
    args = p.parse_args()
    if args.worker:
        serve(args.worker)
        return
    os.environ.update(ENV)
    import run

    run.ENV = ENV  # the machine line lists this script's settings, not run.py's
    print(
        run.environment_text().replace(
            "child env (set by run.py)", "env of each worker (set by this script)"
        )
    )
    print(
        f"- one worker process per implementation; torch.set_num_threads({THREADS}); "
        f"onnxruntime intra_op {THREADS}, no spinning"
    )
    if args.ort_training_python:
        print(f"- onnxruntime-training from {args.ort_training_python}")
    else:
        print("- onnxruntime-training: not timed (no --ort-training-python)")
    print(
        f"- load average: {os.getloadavg()[0]:.1f}; {args.rounds} rounds, medians; "
        "÷ columns: median (range) of per-round ratios\n"
    )
    dims = SMALL if args.small else FULL
    args.targets = targets_for(not args.small)
    rows = []
    import importlib.util

    with tempfile.TemporaryDirectory() as workdir:
        os.environ.setdefault("GRAPHGEN_CACHE_DIR", workdir)
        if not args.no_decoder:
            label = (
                f"decoder {dims['LAYERS']}L w{dims['WIDTH']} h{dims['HEADS']} "
                f"T{dims['CONTEXT']} V{dims['VOCAB']} b{BATCH}"
            )
            bench("nanogpt", label, dims, dims["CONTEXT"], args, rows, workdir)
            print("\n" + table(rows) + "\n", flush=True)
        for name in filter(None, args.models.split(",")):
            if name in ("gpt2", "llama") and not importlib.util.find_spec(
                "transformers"
            ):
                print(f"{name}: transformers is not installed; skipped")
                continue
            sub = os.path.join(workdir, f"small-{name}")
            os.makedirs(sub)
            try:
                bench(name, f"{name} 2L w32 T8 b{BATCH}", TINY, 8, args, rows, sub)
            except (RuntimeError, SystemExit) as e:  # report it, keep the other rows
                print(f"{name}: failed: {e}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
