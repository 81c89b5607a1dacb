"""The long fuzz run: ``python tests/fuzz/run.py --cases 5000 --seed 0`` (``make fuzz``).

Draws cases for the three parts (specs 40 %, ONNX files 33 %, module calls 27 %, after
the fixed cases of :mod:`fuzz.fixed`), runs each in one worker process with a time
limit, prints the outcome table, shrinks one case of each failure class and writes the
reproducers to ``--failures`` (default ``fuzz-failures/``). Exit status 1 if any case
crashed, hung or computed something wrong.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the package

from fuzz import suite
from fuzz.case import PARTS
from fuzz.corpus import REPO
from fuzz.pool import Pool
from fuzz.report import Tally, describe, write_reproducer
from fuzz.shrink import shrink


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cases", type=int, default=5000, help="cases in all (default 5000)"
    )
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds per case phase (default 10)",
    )
    p.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: spec,onnx,call"
    )
    p.add_argument(
        "--failures",
        default=str(REPO / "fuzz-failures"),
        help="where reproducers go (default fuzz-failures/, emptied first)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=28.0,
        help="stop drawing new cases after this long (default 28)",
    )
    p.add_argument(
        "--no-shrink", action="store_true", help="write failing cases as found"
    )
    p.add_argument("--workdir", help="scratch directory (default: a temporary one)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every failure")
    args = p.parse_args(argv)

    parts = [x for x in args.parts.split(",") if x]
    total_share = sum(suite.SHARES[x] for x in parts)
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    tally = Tally()
    done = 0

    def progress(case, result):
        nonlocal done
        done += 1
        tally.add(case, result)
        if result.failed and args.verbose:
            print(f"[{result.outcome}] {case.id}: {result.signature}", flush=True)
        if done % 250 == 0:
            c = tally.counts[case.part]
            print(
                f"{done:>6} cases, {time.monotonic() - t0:6.0f} s; {case.part}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
                flush=True,
            )

    with Pool(seconds=args.timeout, workdir=args.workdir) as pool:
        for i, part in enumerate(parts):
            budget = round(args.cases * suite.SHARES[part] / total_share)
            fixed = suite.fixed_cases(part)
            for case in fixed:
                progress(case, pool.run(case))
            print(f"{part}: drawing {budget - len(fixed)} cases", flush=True)
            suite.draw(
                part,
                max(budget - len(fixed), 0),
                args.seed + 101 * i,
                lambda case: progress(case, pool.run(case)),
                deadline=deadline,
            )
        elapsed = time.monotonic() - t0
        print()
        print(
            f"graphgen fuzz: {tally.total} cases, seed {args.seed}, {elapsed / 60:.1f} min"
        )
        print(tally.table())
        if time.monotonic() > deadline:
            print(f"(stopped drawing after {args.minutes:g} minutes)")
        classes = tally.classes()
        out = Path(args.failures)
        if out.exists():
            shutil.rmtree(out)
        if not classes:
            print("\nno failures")
            return 0
        out.mkdir(parents=True)
        print(
            f"\n{len(classes)} failure classes ({len(tally.failures)} failing cases):"
        )
        for n, (cls, items) in enumerate(classes.items(), 1):
            case, result = items[0]
            size = case.size()
            if not args.no_shrink:
                case, result = shrink(case, result, pool)
            d = write_reproducer(
                out, n, case, result, size if case.size() < size else None
            )
            print(f"\n=== {n}. {len(items)} × {cls}")
            print(describe(case, result, size if case.size() < size else None)[:4000])
            print(
                f"(reproducer: {d.relative_to(out.parent) if out.is_absolute() else d})"
            )
        print(f"\nreproducers written to {out}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
