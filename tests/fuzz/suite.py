"""Drawing cases with hypothesis, and the runs built from them (short and long)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, Phase, given, seed, settings

from . import fixed, gen_calls, gen_onnx, gen_specs
from .corpus import models

# the long run's share of each part
SHARES = {"spec": 0.40, "onnx": 0.33, "call": 0.27}
# the short run's cases per part (plus the fixed ones)
SHORT = {"spec": 150, "onnx": 100, "call": 120}
SHORT_SEED = 19
SHORT_MAX_BYTES = 100_000  # drawn cases larger than this stay in the long run


def strategy(part, short=False):
    if part == "spec":
        return gen_specs.spec_cases()
    if part == "onnx":
        return gen_onnx.onnx_cases(models(short=short))
    if part == "call":
        return gen_calls.call_cases(
            gen_calls.SHORT_MODULES if short else gen_calls.MODULES
        )
    raise ValueError(part)


def fixed_cases(part, short=False):
    if part == "spec":
        return fixed.spec_cases(short)
    if part == "onnx":
        return fixed.onnx_cases()
    return fixed.call_cases(gen_calls.SHORT_MODULES if short else gen_calls.MODULES)


def draw(part, n, seed_value, on_case, short=False, deadline=None):
    """Call ``on_case`` on ``n`` distinct cases of ``part`` drawn by hypothesis from
    ``seed_value`` (deterministic), or until ``deadline`` (``time.monotonic()``)."""
    seen = set()
    strat = strategy(part, short)
    for round_ in range(20):
        want = n - len(seen)
        if want <= 0 or (deadline and time.monotonic() > deadline):
            return len(seen)

        @seed(seed_value * 1000 + round_)
        @settings(
            # a new run starts from the simplest example, which an earlier one drew
            max_examples=want + max(10, want // 10),
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=False,
            print_blob=False,
        )
        @given(strat)
        def one(case):
            if len(seen) >= n or (deadline and time.monotonic() > deadline):
                return
            if case.id in seen:
                return
            seen.add(case.id)
            on_case(case)

        one()
    return len(seen)


def short_cases():
    """The short run's cases, by part: the fixed ones, then the drawn ones."""
    out = {}
    for i, part in enumerate(SHORT):
        cases = list(fixed_cases(part, short=True))

        def keep(case, cases=cases):
            if case.size() <= SHORT_MAX_BYTES:
                cases.append(case)

        draw(part, SHORT[part], SHORT_SEED + i, keep, short=True)
        out[part] = cases
    return out
