"""The arrays ``graphgen train`` reads: checked against the module before any step.

A data file is an ``.npz`` holding one array per input of the spec, every array with the
examples along its first axis (the spec's batch size). What a module cannot take is one
:class:`~graphgen.errors.GraphgenError` naming the file, the array and what was expected:
a missing array, a wrong rank, shape or dtype, a different number of examples than the
other arrays, a non-finite value, or a label outside ``[0, classes)``.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from .. import graph as g
from ..errors import GraphgenError


class DataError(GraphgenError):
    """A data file ``graphgen train`` cannot train on."""


def label_classes(A):
    """``{input: number of classes}`` for each int64 input of graph ``A`` that indexes
    the last axis of the op's first argument (the labels of a classification loss),
    where that axis has a fixed size."""
    out = {}
    for n in A:
        a = A.nodes[n]
        if a.get(g.KIND) != g.INPUT or a.get(g.DTYPE) != "int64":
            continue
        for s in A.successors(n):
            args = g.operands(A, s)
            if args and args[0] != n and A.nodes[args[0]].get(g.SHAPE):
                last = A.nodes[args[0]][g.SHAPE][-1]
                if isinstance(last, int):
                    out[n] = last
    return out


def logits_of(A, labels):
    """The value whose argmax over its last axis predicts ``labels`` (the first
    argument of the loss that reads them), or None."""
    for s in A.successors(labels):
        args = g.operands(A, s)
        if args and args[0] != labels:
            return args[0]
    return None


def load(path, module, classes):
    """The arrays of ``path`` the module's inputs need, checked and converted to the
    module's dtypes; returns ``(arrays, n_examples)``."""
    path = os.fspath(path)
    try:
        stored = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not an .npz file NumPy can read ({e})") from None
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an .npz file with one array per input")
    arrays, n = {}, None
    with stored:
        for name, shape in module.INPUTS.items():
            want = module.DTYPES[name]
            expected = f"shape (N, {', '.join(map(str, shape[1:]))}) {want}".replace(
                ", )", ")"
            )
            if name not in stored.files:
                have = ", ".join(repr(f) for f in stored.files) or "none"
                raise DataError(
                    f"{path}: no array {name!r} (expected {expected}); it has {have}"
                )
            try:
                a = stored[name]
            except ValueError as e:
                raise DataError(
                    f"{path}: array {name!r} cannot be read ({e})"
                ) from None
            if a.ndim != len(shape) or tuple(a.shape[1:]) != tuple(shape[1:]):
                raise DataError(
                    f"{path}: array {name!r} has shape {a.shape}, expected {expected}"
                )
            integer = np.issubdtype(a.dtype, np.integer)
            if want == "int64" and not integer:
                raise DataError(
                    f"{path}: array {name!r} is {a.dtype}, expected integer labels "
                    f"({expected})"
                )
            if want != "int64" and not (integer or np.issubdtype(a.dtype, np.floating)):
                raise DataError(
                    f"{path}: array {name!r} is {a.dtype}, expected numbers ({expected})"
                )
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise DataError(
                    f"{path}: array {name!r} has {a.shape[0]} examples, the others {n}"
                )
            a = np.ascontiguousarray(a, dtype=want)
            if want != "int64" and not np.isfinite(a).all():
                bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
                raise DataError(
                    f"{path}: array {name!r} has a non-finite value at index {bad}"
                )
            if name in classes and a.size:
                c = classes[name]
                wrong = np.flatnonzero((a < 0) | (a >= c))
                if wrong.size:
                    i = int(wrong[0])
                    raise DataError(
                        f"{path}: array {name!r} has label {int(a.flat[i])} at index "
                        f"{i}, expected labels in [0, {c})"
                    )
            arrays[name] = a
    if not n:
        raise DataError(f"{path}: no examples (the arrays are empty)")
    return arrays, n
