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


def shrink(case, result, pool, budget=40, seconds=120.0):
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

    # halve long lists and strings first (sizes), then drop entries, then keys
    for path, v in _walk(spec):
        if isinstance(v, list) and len(v) > 4:
            yield _with(case, emit(_put(spec, path, v[: len(v) // 2])))
        if isinstance(v, str) and len(v) > 64:
            yield _with(case, emit(_put(spec, path, v[: len(v) // 2])))
    for sec in ("nodes", "params", "inputs"):
        entries = spec.get(sec)
        if isinstance(entries, dict) and len(entries) > 1:
            for k in list(entries):
                d = copy.deepcopy(spec)
                del d[sec][k]
                yield _with(case, emit(d))
    for k in list(spec):
        d = copy.deepcopy(spec)
        del d[k]
        yield _with(case, emit(d))


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
