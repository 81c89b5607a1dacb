"""The short fuzz run, part of ``make test``: fixed cases plus a few hundred drawn with a
fixed seed, in one worker process. Every case must end ``ok`` or ``error``; a failure
prints each failing case's (shrunk) reproducer and outcome.

Cases that fail today because of bugs being fixed are listed in :mod:`fuzz.known` and
run here as strict xfails: when a fix lands they pass, the xfail turns red, and the
entry must go.
"""

from __future__ import annotations

import pytest

from .case import PARTS
from .known import KNOWN
from .pool import Pool
from .report import describe
from .shrink import shrink
from .suite import short_cases

TIMEOUT = 8.0  # seconds per phase of a case


class KnownFailure(AssertionError):
    """A case of :data:`fuzz.known.KNOWN` still fails the way it did."""


@pytest.fixture(scope="module")
def pool():
    with Pool(seconds=TIMEOUT, grace=4.0) as p:
        yield p


@pytest.fixture(scope="module")
def cases():
    return short_cases()


@pytest.mark.parametrize("part", PARTS)
def test_short_run(part, cases, pool):
    todo = [c for c in cases[part] if c.id not in KNOWN]
    failures = []
    for case in todo:
        result = pool.run(case)
        if result.failed:
            failures.append((case, result))
    if failures:
        reports = []
        for case, result in failures:
            small, small_result = shrink(case, result, pool, budget=12, seconds=20)
            text = describe(
                small, small_result, case.size() if small is not case else None
            )
            reports.append(f"--- {case.id}\n{text}")
        pytest.fail(
            f"{len(failures)} of {len(todo)} {part} cases failed:\n\n"
            + "\n\n".join(reports),
            pytrace=False,
        )


@pytest.mark.parametrize(
    "case_id",
    [
        pytest.param(
            case_id,
            marks=pytest.mark.xfail(strict=True, raises=KnownFailure, reason=reason),
        )
        for case_id, reason in sorted(KNOWN.items())
    ],
)
def test_known_failure(case_id, cases, pool):
    found = [c for part in PARTS for c in cases[part] if c.id == case_id]
    assert found, (
        f"{case_id} is no longer drawn: the generators changed; run "
        "`python -m pytest tests/fuzz` and update tests/fuzz/known.py"
    )
    result = pool.run(found[0])
    if result.failed:
        raise KnownFailure(describe(found[0], result))


def test_the_oracle_sees_small_errors():
    """The checks behind ``ok`` notice a gradient off by 0.1 % in one array, and a
    forward output off by 1e-6 (on tiny, in-process)."""
    import types

    import graphgen

    from .corpus import REPO
    from .execute import check_graph

    G = graphgen.load(str(REPO / "examples" / "tiny.yaml"))
    mod = graphgen.compile(G)
    assert check_graph(G, mod).outcome == "ok"

    def altered(**overrides):
        names = {k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")}
        return types.SimpleNamespace(**(names | overrides))

    def value_and_grad(**arrays):
        loss, grads = mod.value_and_grad(**arrays)
        return loss, grads | {"b1": grads["b1"] * 1.001}

    def forward(**arrays):
        out = mod.forward(**arrays)
        return out | {"y": out["y"] + 1e-6}

    assert check_graph(G, altered(value_and_grad=value_and_grad)).outcome == "wrong"
    assert check_graph(G, altered(forward=forward)).outcome == "wrong"
