"""The outcome table, and reproducers for failing cases."""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

from .case import OUTCOMES, PARTS, Case, classname
from .corpus import REPO


class Tally:
    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)
        self.unchecked = collections.Counter()
        self.seconds = collections.Counter()
        self.failures = []  # (case, result)

    def add(self, case, result):
        self.counts[case.part][result.outcome] += 1
        self.seconds[case.part] += result.seconds
        if result.unchecked:
            self.unchecked[case.part] += 1
        if result.failed:
            self.failures.append((case, result))

    @property
    def total(self):
        return sum(sum(c.values()) for c in self.counts.values())

    def table(self):
        head = f"{'part':<6} {'cases':>6} " + " ".join(f"{o:>6}" for o in OUTCOMES)
        head += f"  {'(ok unchecked)':>14} {'seconds':>8}"
        lines = [head, "-" * len(head)]
        total = collections.Counter()
        for part in PARTS:
            c = self.counts.get(part, collections.Counter())
            n = sum(c.values())
            total.update(c)
            lines.append(
                f"{part:<6} {n:>6} "
                + " ".join(f"{c[o]:>6}" for o in OUTCOMES)
                + f"  {self.unchecked[part]:>14} {self.seconds[part]:>8.0f}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<6} {sum(total.values()):>6} "
            + " ".join(f"{total[o]:>6}" for o in OUTCOMES)
            + f"  {sum(self.unchecked.values()):>14} {sum(self.seconds.values()):>8.0f}"
        )
        return "\n".join(lines)

    def classes(self):
        """Failure class -> [(case, result)], the classes in order of first sighting."""
        out = {}
        for case, result in self.failures:
            out.setdefault(classname(result.signature), []).append((case, result))
        return out


# ------------------------------------------------------------------ reproducers


def _show(data, limit=1500):
    try:
        text = data.decode("utf-8")
        printable = all(c.isprintable() or c in "\n\t\r" for c in text[:limit])
    except UnicodeDecodeError:
        printable = False
    if printable:
        body = text[:limit] + (
            f"\n… ({len(data):,} bytes in all)" if len(data) > limit else ""
        )
        return body
    head = data[:256]
    return f"{len(data):,} bytes, not UTF-8 text; the first {len(head)}: {head!r}"


def call_snippet(case):
    """A standalone Python reproducer of a call case."""
    from .gen_calls import SOURCES

    c = case.call
    name, backend, dtype = c["module"].split("/")
    path, opts = SOURCES[name]
    lines = [
        "import numpy as np",
        "import graphgen",
        "from graphgen.check import random_arrays",
        "",
        f"G = graphgen.load({str(path)!r}{''.join(f', {k}={v!r}' for k, v in opts.items())})",
        f"mod = graphgen.compile(G, backend={backend!r}, dtype={dtype!r})",
        f"arrays = random_arrays(G, seed={c['seed']}, sizes={c['sizes']!r}, dtype={dtype!r})",
        'cotangents = {o: arrays.pop(k) for o, k in (G.graph.get("cotangents") or {}).items()}',
        f"target = {c['target']!r}",
    ]
    if c.get("code"):
        lines += ["a = arrays[target]", *c["code"].splitlines(), "arrays[target] = a"]
    if c.get("arrays_code"):
        lines += c["arrays_code"].splitlines()
    if c.get("cot_code"):
        lines += c["cot_code"].splitlines()
    call = (
        "mod.vjp(cotangents, **arrays)"
        if c["fn"] == "vjp"
        else f"mod.{c['fn']}(**arrays)"
    )
    lines += [f"result = {call}", "print(result)"]
    return "\n".join(lines) + "\n"


def command_line(case):
    import shlex

    return "graphgen " + " ".join(shlex.quote(a) for a in case.argv)


def describe(case, result, shrunk_from=None):
    """The reproducer as text: input, command, outcome, last frames."""
    out = [
        f"outcome: {result.outcome} — {result.signature}",
        f"case: {case.id} ({case.part} {case.kind}, from {case.origin or '?'})",
    ]
    if case.note:
        out.append(f"mutation: {case.note[:300]}")
    if shrunk_from:
        out.append(f"shrunk from {shrunk_from:,} bytes")
    if case.part == "call":
        out += ["reproducer:", _indent(call_snippet(case))]
    else:
        for name, data in case.files.items():
            out += [f"file {name}:", _indent(_show(data))]
        out.append(f"command: {command_line(case)}")
        if case.verify not in ("none", "file"):
            out.append(f"then the fuzzer checks the result ({case.verify})")
    out.append(f"what happened: {result.detail[:600]}")
    if result.trace:
        out += ["last frames:", _indent(result.trace[-2500:])]
    return "\n".join(out)


def _indent(text):
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def slug(text, n=60):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:n].lower()


def write_reproducer(directory, index, case, result, shrunk_from=None):
    d = (
        Path(directory)
        / f"{index:02d}-{result.outcome}-{slug(result.signature.split(':', 1)[-1])}"
    )
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if case.part == "call":
        (d / "repro.py").write_text(call_snippet(case), encoding="utf-8")
    else:
        for name, data in case.files.items():
            (d / name).write_bytes(data)
    meta = {
        "part": case.part,
        "kind": case.kind,
        "note": case.note,
        "files": list(case.files),
        "argv": case.argv,
        "where": list(case.where),
        "verify": case.verify,
        "call": case.call,
        "params": case.params,
        "origin": case.origin,
    }
    (d / "case.json").write_text(
        json.dumps(meta, indent=1, default=repr), encoding="utf-8"
    )
    (d / "README.txt").write_text(
        describe(case, result, shrunk_from) + "\n", encoding="utf-8"
    )
    if case.part != "call":
        (d / "replay.py").write_text(
            "# Runs this case again through the fuzz harness and prints its outcome.\n"
            "import sys\n"
            f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
            "from fuzz.replay import replay\n\n"
            "replay(__file__)\n",
            encoding="utf-8",
        )
    return d


def load_case(directory):
    d = Path(directory)
    meta = json.loads((d / "case.json").read_text(encoding="utf-8"))
    files = {name: (d / name).read_bytes() for name in meta.pop("files")}
    meta["where"] = tuple(meta["where"])
    return Case(files=files, **meta)
