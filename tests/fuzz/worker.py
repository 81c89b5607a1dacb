"""The fuzz worker: ``python tests/fuzz/worker.py FD`` (started by :mod:`fuzz.pool`).

Reads pickled ``(case, seconds)`` from stdin until EOF; writes length-prefixed pickled
``("phase", name)`` and ``("result", Result)`` messages to file descriptor ``FD``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fuzz package


def main():
    import resource

    from fuzz.execute import execute
    from fuzz.pool import send

    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # a runaway allocation fails here instead of taking the machine's memory
    limit = int(os.environ.get("FUZZ_MEMORY_LIMIT", str(8 << 30)))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(1000)  # what graphgen's users get
    out = os.fdopen(int(sys.argv[1]), "wb")
    stdin = sys.stdin.buffer

    import pickle

    # import what every case needs before the first one, outside its time limit
    import graphgen.cli
    import graphgen.frontends.onnx  # noqa: F401

    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        case, seconds = pickle.loads(stdin.read(n))

        def phase(name):
            send(out, ("phase", name))

        result = execute(case, seconds, phase)
        send(out, ("result", result))


if __name__ == "__main__":
    main()
