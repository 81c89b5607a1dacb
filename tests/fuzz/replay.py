"""Run a written reproducer again: ``python fuzz-failures/NN-.../replay.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def replay(path):
    from .pool import Pool
    from .report import describe, load_case

    d = Path(path).resolve().parent
    case = load_case(d)
    with Pool(seconds=float(os.environ.get("FUZZ_TIMEOUT", "20"))) as pool:
        result = pool.run(case)
    print(describe(case, result))
    sys.exit(1 if result.failed else 0)
