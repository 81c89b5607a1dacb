"""Count ONNX node tests passed / attempted for the ops graphgen imports (the README table).

    python benchmarks/onnx_conformance.py

It runs the same selection as tests/test_onnx_backend.py (which the test suite runs) and
prints, as Markdown, the totals and every exclusion with its reason and count.
"""

from __future__ import annotations

import re
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]


def main():
    import test_onnx_backend as t
    from onnx.backend.test import loader

    names = [c.name for c in loader.load_model_tests(kind="node")]
    prefixes = sorted(set(t.SUPPORTED.values()))
    selected = [
        n for n in names if any(re.match(rf"^test_{p}(_.*)?$", n) for p in prefixes)
    ]
    excluded = {}
    attempted = []
    for n in selected:
        why = next((r for p, r in t.EXCLUDED.items() if re.search(p, n + "_cpu")), None)
        if why is None:
            attempted.append(n)
        else:
            excluded.setdefault(why, []).append(n)

    suite = unittest.TestSuite()
    for case in t.backend_test.test_cases.values():
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(case))
    result = unittest.TestResult()
    suite.run(result)
    failed = {
        test.id().rsplit(".", 1)[-1].removesuffix("_cpu")
        for test, _ in result.failures + result.errors
    }
    ran = [n for n in attempted if n not in failed]
    print(
        f"ONNX node tests for the {len(t.SUPPORTED)} supported ONNX ops: "
        f"**{len(ran)} passed of {len(attempted)} attempted**; "
        f"{sum(map(len, excluded.values()))} excluded."
    )
    if failed:
        print("\nFailed: " + ", ".join(sorted(failed)))
    print("\n| excluded | tests | why |\n|---|---|---|")
    for why, tests in sorted(excluded.items(), key=lambda kv: -len(kv[1])):
        example = tests[0].removeprefix("test_")
        print(f"| e.g. `{example}` | {len(tests)} | {why} |")


if __name__ == "__main__":
    main()
