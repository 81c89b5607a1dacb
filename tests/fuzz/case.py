"""What a fuzz case is, and what became of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

OUTCOMES = ("ok", "error", "crash", "hang", "wrong")
FAILURES = ("crash", "hang", "wrong")
PARTS = ("spec", "onnx", "call")


@dataclasses.dataclass(repr=False)
class Case:
    """One input and what to do with it.

    CLI cases (parts ``spec`` and ``onnx``) write ``files`` into a fresh directory and
    run ``graphgen ARGV`` there; the first file is the input the error must name.
    ``where`` lists node and key names the input's defect sits at (an error line must
    then name a node, key or line; empty when the input has no such place, e.g. garbage
    bytes). ``verify`` says how an exit status 0 is checked:

    ``module``  import the written module and check it (forward against the reference
                interpreter and onnxruntime, gradients against finite differences);
    ``numba``   the same for a Numba module, and against the NumPy module;
    ``syntax``  the written module parses;
    ``check``   ``graphgen check`` passed (exit 1 is confirmed by finite differences);
    ``spec``    ``graphgen import`` wrote a spec that graphgen loads;
    ``file``    the output file exists and is not empty.

    Call cases (part ``call``) describe the call in ``call``: the module, the function,
    the sizes and seed of the plain arrays, and the mutation (Python code run on the
    array ``a``; see :mod:`fuzz.gen_calls`).
    """

    part: str
    kind: str
    note: str = ""
    files: dict = dataclasses.field(default_factory=dict)
    argv: list = dataclasses.field(default_factory=list)
    where: tuple = ()
    verify: str = "module"
    call: dict | None = None
    params: dict = dataclasses.field(default_factory=dict)
    origin: str = ""

    @property
    def input(self):
        return next(iter(self.files), None)

    @property
    def id(self):
        h = hashlib.sha1()
        h.update(self.part.encode() + b"\0" + self.kind.encode() + b"\0")
        for name, data in self.files.items():
            h.update(name.encode("utf-8", "surrogatepass") + b"\0" + data + b"\0")
        h.update(json.dumps(self.argv).encode() + b"\0")
        if self.call is not None:
            h.update(json.dumps(self.call, sort_keys=True, default=repr).encode())
        return f"{self.part}-{self.kind}-{h.hexdigest()[:10]}"

    def __repr__(self):  # hypothesis prints its examples: keep it short
        return f"<Case {self.id}>"

    def _repr_pretty_(self, p, cycle):  # hypothesis's pretty printer asks this
        p.text(repr(self))

    @property
    def slow(self):
        """How many times the usual time limit this case gets (big inputs take longer
        to read; a hang still takes far longer)."""
        return 1.5 if self.kind.startswith("sizes.") else 1.0

    def size(self):
        return sum(len(b) for b in self.files.values())


@dataclasses.dataclass
class Result:
    outcome: str
    detail: str = ""
    signature: str = ""
    trace: str = ""
    seconds: float = 0.0
    unchecked: bool = False  # ok, but the result was too large (or odd) to check

    def __post_init__(self):
        assert self.outcome in OUTCOMES, self.outcome
        if not self.signature:
            self.signature = f"{self.outcome}: {self.detail}"[:200]

    @property
    def failed(self):
        return self.outcome in FAILURES


def classname(signature):
    """A failure class: the signature without numbers, addresses and quoted values."""
    s = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", signature)
    s = re.sub(r"0x[0-9a-f]+", "0x…", s)
    s = re.sub(r"\d+", "N", s)
    return s
