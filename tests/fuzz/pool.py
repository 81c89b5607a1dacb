"""A worker subprocess that runs cases, and the parent's side of it.

The worker (``tests/fuzz/worker.py``) reads pickled ``(case, seconds)`` from its stdin
and writes ``("phase", name)`` and ``("result", Result)`` messages to a pipe of its own,
so that anything graphgen or a library prints cannot garble them. Each phase (the CLI
run, checking its result, compiling a module for the call cases) gets its own deadline:
the soft limit is an alarm inside the worker (a hang becomes a ``hang`` result with the
traceback of where it was); the hard limit, a few seconds later, kills the worker (after
asking faulthandler for its stacks) and starts a new one.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .case import Result

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"

# one thread per library: the machine is shared
THREADS = {
    k: "1"
    for k in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}


def send(f, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _read_exact(fd, n, deadline):
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Pool:
    """One worker process; :meth:`run` a case in it, with time limits.

    ``seconds`` is the soft limit of each phase, ``setup`` that of compiling a module
    for the call cases (a cold Numba cache takes a while), ``grace`` how much longer the
    parent waits before it kills the worker.
    """

    def __init__(self, seconds=10.0, setup=180.0, grace=5.0, workdir=None, env=None):
        self.seconds = seconds
        self.setup = setup
        self.grace = grace
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="graphgen-fuzz-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        self.proc = None
        self.restarts = 0

    # ------------------------------------------------------------------ process
    def _start(self):
        r, w = os.pipe()
        env = dict(os.environ)
        for k in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME"):
            env.pop(k, None)
        env.update(THREADS)
        env.update(
            GRAPHGEN_DEBUG="1",
            FUZZ_WORKDIR=str(self.workdir),
            GRAPHGEN_CACHE_DIR=str(self.workdir / "cache"),
            PYTHONFAULTHANDLER="1",
            PYTHONWARNINGS="ignore",
        )
        if "GRAPHGEN_CACHE_DIR" in os.environ:  # the call modules' (persistent) cache
            env["FUZZ_MODULE_CACHE"] = os.environ["GRAPHGEN_CACHE_DIR"]
        env.update(self.extra_env)
        self.log = open(self.workdir / f"worker-{self.restarts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(w)],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
            pass_fds=(w,),
            env=env,
            cwd=str(self.workdir),
        )
        os.close(w)
        self.rfd = r

    def _stop(self, dump=False):
        if self.proc is None:
            return ""
        tail = ""
        if self.proc.poll() is None:
            if dump:  # faulthandler prints every thread's stack on SIGUSR1
                try:
                    self.proc.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                except OSError:
                    pass
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        os.close(self.rfd)
        self.log.close()
        try:
            text = (self.workdir / f"worker-{self.restarts}.log").read_bytes()
            tail = text[-4000:].decode("utf-8", "replace")
        except OSError:
            pass
        self.proc = None
        self.restarts += 1
        return tail

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop()
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --------------------------------------------------------------------- run
    def run(self, case):
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._stop()
            self._start()
        t0 = time.monotonic()
        try:
            send(self.proc.stdin, (case, self.seconds * case.slow))
        except (BrokenPipeError, OSError):
            tail = self._stop()
            return Result(
                "crash", "the worker died before the case", "crash: worker died", tail
            )
        phase = "start"
        deadline = t0 + self.setup  # the worker may still be importing
        while True:
            try:
                head = _read_exact(self.rfd, 8, deadline)
                if head is None:
                    tail = self._stop(dump=True)
                    return Result(
                        "hang",
                        f"killed after {time.monotonic() - t0:.0f} s in phase {phase}",
                        f"hang (killed) in phase {phase}",
                        _stacks(tail),
                        seconds=time.monotonic() - t0,
                    )
                (n,) = struct.unpack("<Q", head)
                body = _read_exact(self.rfd, n, time.monotonic() + 60)
                if body is None:
                    raise EOFError
            except EOFError:
                code = self.proc.wait()
                tail = self._stop()
                if phase == "onnxruntime":  # the reference crashed, not graphgen
                    return Result(
                        "ok",
                        "not checked against onnxruntime: it crashed on this model",
                        seconds=time.monotonic() - t0,
                        unchecked=True,
                    )
                how = (
                    f"signal {signal.Signals(-code).name}"
                    if code < 0
                    else f"exit status {code}"
                )
                return Result(
                    "crash",
                    f"the worker died ({how}) in phase {phase}",
                    f"crash: worker died ({how}) in phase {phase}",
                    _stacks(tail),
                    seconds=time.monotonic() - t0,
                )
            kind, value = pickle.loads(body)
            if kind == "phase":
                phase = value
                limit = (
                    self.setup
                    if value.startswith("setup")
                    else self.seconds * case.slow
                )
                deadline = time.monotonic() + limit + self.grace
                continue
            return value


def _stacks(tail):
    """The last faulthandler dump (or whatever the worker printed last)."""
    starts = [
        tail.rfind(m) for m in ("Fatal Python error", "Thread 0x", "Current thread")
    ]
    found = [x for x in starts if x >= 0]
    text = tail[min(found) :] if found else tail[-2000:]
    return text.split("\nExtension modules:")[0]
