"""Make a failing case smaller while it fails the same way.

Greedy: try smaller candidates (a spec without an entry, key or half a list; a model
without a node, initializer, input or output; a file cut in half), keep the first one
whose failure has the same class, repeat until nothing smaller fails alike or the budget
is spent. Hangs are not shrunk (each try would cost the time limit).
"""

from __future__ import annotations

import copy
import json
import time

from .case import classname


def same(a, b):
    return a.outcome == b.outcome and classname(a.signature) == classname(b.signature)


def shrink(case, result, pool, budget=100, seconds=120.0):
    """The smallest case found that fails like ``case``, and its result."""
    if result.outcome == "hang" or case.part == "call":
        return case, result
    start = time.monotonic()
    tries = 0
    best, best_result = case, result
    improved = True
    while improved and tries < budget and time.monotonic() - start < seconds:
        improved = False
        for cand in candidates(best):
            if tries >= budget or time.monotonic() - start >= seconds:
                break
            if cand.size() >= best.size() and cand.size() > 0:
                continue
            tries += 1
            r = pool.run(cand)
            if same(r, result):
                best, best_result = cand, r
                improved = True
                break
    return best, best_result


def _with(case, data):
    c = copy.copy(case)
    c.files = dict(case.files)
    c.files[case.input] = data
    return c


def candidates(case):
    data = case.files[case.input]
    if case.part == "onnx":
        yield from _onnx_candidates(case, data)
    else:
        yield from _spec_candidates(case, data)
    # the file cut short: only for inputs that are bytes anyway (a cut spec or model is
    # malformed, which is another kind of input than a misplaced name)
    if len(data) > 64 and not case.where:
        for frac in (2, 4):
            yield _with(case, data[: len(data) // frac])


def _spec_candidates(case, data):
    import yaml

    is_json = case.input.endswith(".json")
    try:
        text = data.decode("utf-8")
        spec = json.loads(text) if is_json else yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - not a parseable spec: bytes only
        return
    if not isinstance(spec, dict):
        return

    def emit(d):
        if is_json:
            return json.dumps(d, indent=1).encode("utf-8", "surrogatepass")
        big = len(data) > 100_000
        if big:
            return json.dumps(d).encode("utf-8", "surrogatepass")
        text = yaml.safe_dump(
            d,
            sort_keys=False,
            allow_unicode=True,
            width=1 << 16,
            default_flow_style=None,
        )
        return text.encode("utf-8", "surrogatepass")

    # halve long lists and strings first (sizes), then drop entries with everything
    # computed from them (in halves, quarters, ... then one by one), then keys
    for path, v in _walk(spec):
        if isinstance(v, list) and len(v) > 4:
            yield _with(case, emit(_put(spec, path, v[: len(v) // 2])))
        if isinstance(v, str) and len(v) > 64:
            yield _with(case, emit(_put(spec, path, v[: len(v) // 2])))
    # the last nodes first: they feed nothing earlier, so the rest stays as it was
    entries = [
        n
        for sec in ("nodes", "params", "inputs")
        if isinstance(spec.get(sec), dict)
        for n in (list(spec[sec])[::-1] if sec == "nodes" else spec[sec])
    ]
    # each chunk with what is computed from it, then without (where a failure comes
    # before names are resolved, a dangling name is no matter)
    chunk = len(entries) // 2
    while chunk >= 1:
        for k in range(0, len(entries), chunk):
            gone = set(entries[k : k + chunk])
            d = _without(spec, gone)
            if d is not None:
                yield _with(case, emit(d))
            d = copy.deepcopy(spec)
            for sec in ("nodes", "params", "inputs"):
                if isinstance(d.get(sec), dict):
                    d[sec] = {n: v for n, v in d[sec].items() if n not in gone}
            yield _with(case, emit(d))
        chunk //= 2
    for k in list(spec):
        d = copy.deepcopy(spec)
        del d[k]
        yield _with(case, emit(d))


def _without(spec, names):
    """``spec`` without ``names`` and every node computed from them (``None`` if that
    leaves no node)."""
    nodes = spec.get("nodes") if isinstance(spec.get("nodes"), dict) else {}
    gone = set(names)
    changed = True
    while changed:
        changed = False
        for n, v in nodes.items():
            args = v.get("args") if isinstance(v, dict) else None
            if (
                n not in gone
                and isinstance(args, list)
                and any(_among(a, gone) for a in args)
            ):
                gone.add(n)
                changed = True
    d = copy.deepcopy(spec)
    for sec in ("nodes", "params", "inputs"):
        if isinstance(d.get(sec), dict):
            d[sec] = {k: v for k, v in d[sec].items() if k not in gone}
    if isinstance(d.get("nodes"), dict) and not d["nodes"]:
        return None
    lost = False
    for key in ("outputs", "wrt"):
        if isinstance(d.get(key), list):
            kept = [x for x in d[key] if not _among(x, gone)]
            lost |= key == "outputs" and len(kept) < len(d[key])
            d[key] = kept
    if "loss" in d and _among(d["loss"], gone):
        del d["loss"]
        lost = True
    if lost and isinstance(d.get("nodes"), dict):
        # what the removed outputs computed from stays computed: every node no other
        # node uses becomes an output
        used = {
            a
            for v in d["nodes"].values()
            if isinstance(v, dict) and isinstance(v.get("args"), list)
            for a in v["args"]
            if isinstance(a, str)
        }
        d["outputs"] = [n for n in d["nodes"] if isinstance(n, str) and n not in used]
    return d


def _among(x, names):
    try:
        return x in names
    except TypeError:  # a list where a name should be
        return False


def _walk(v, path=()):
    yield path, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _walk(x, (*path, k))
    elif isinstance(v, list) and len(v) <= 8:
        for i, x in enumerate(v):
            yield from _walk(x, (*path, i))


def _put(v, path, value):
    if not path:
        return value
    v = copy.deepcopy(v)
    t = v
    for p in path[:-1]:
        t = t[p]
    t[path[-1]] = value
    return v


def _onnx_candidates(case, data):
    try:
        import onnx

        m = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001
        return
    g = m.graph
    for field in ("node", "initializer", "output", "input", "value_info"):
        coll = getattr(g, field)
        for i in range(len(coll) - 1, -1, -1):
            c = onnx.ModelProto()
            c.CopyFrom(m)
            del getattr(c.graph, field)[i]
            yield _with(case, c.SerializeToString())
    for i, node in enumerate(g.node):
        for j in range(len(node.attribute)):
            c = onnx.ModelProto()
            c.CopyFrom(m)
            del c.graph.node[i].attribute[j]
            yield _with(case, c.SerializeToString())
