"""Train examples/gpt.yaml as a character-level language model on the Zen of Python.

The text ships with Python: the standard library's ``this`` module holds it rot13-encoded
in ``this.s`` (decoded with its table ``this.d``). graphgen compiles the spec into a
standalone module (NumPy, or Numba with ``--backend numba``); this script only feeds it
batches, runs plain Adam on the gradients it returns, and samples text from it.

    python examples/tiny_gpt.py                  # a few minutes on 2 cores
    python examples/tiny_gpt.py --steps 300      # quicker, a higher loss

Every window of the text is a training example: ``tokens`` are ``context`` characters
and ``targets`` the characters that follow each one. The loss is the cross-entropy in
nats per character; the unigram entropy of the text (how well one can do knowing only
how often each character occurs) is the baseline to beat.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import numpy as np
import yaml

import graphgen
from graphgen.frontends import spec as spec_module

SPEC = Path(__file__).with_name("gpt.yaml")


def zen():
    """The Zen of Python, decoded from the ``this`` module (which prints it on import)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


def compile_gpt(vocab, args):
    data = yaml.safe_load(SPEC.read_text())
    data["dtype"] = "float32"
    data["sizes"].update(
        vocab=vocab,
        context=args.context,
        layers=args.layers,
        width=args.heads * args.head,
        heads=args.heads,
        head=args.head,
        hidden=4 * args.heads * args.head,
    )
    G = spec_module.from_dict(data, source=str(SPEC))
    return graphgen.compile(G, backend=args.backend)


class Adam:
    """Plain Adam (Kingma & Ba), in place on a dict of float32 arrays."""

    def __init__(self, params, lr, betas=(0.9, 0.99), eps=1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads, lr):
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for k, g in grads.items():
            self.m[k] += (1 - b1) * (g - self.m[k])
            self.v[k] += (1 - b2) * (g * g - self.v[k])
            params[k] -= lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)


def sample(module, params, ids, chars, prompt, n, context, rng, temperature):
    """``n`` characters after ``prompt``; the model reads at most ``context`` of them.
    Attention is causal, so the logits at a position depend only on what precedes it:
    the window is padded after the text with any character."""
    out = [ids[c] for c in prompt]
    for _ in range(n):
        window = out[-context:]
        tokens = np.zeros((1, context), dtype=np.int64)
        tokens[0, : len(window)] = window
        targets = np.zeros((1, context), dtype=np.int64)
        z = module.forward(tokens=tokens, targets=targets, **params)["logits"]
        logits = z[0, len(window) - 1].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        out.append(int(rng.choice(len(chars), p=p / p.sum())))
    return "".join(chars[i] for i in out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head", type=int, default=16, help="width of one head")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--backend", choices=["numpy", "numba"], default="numpy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    text = zen()
    chars = sorted(set(text))
    ids = {c: i for i, c in enumerate(chars)}
    data = np.array([ids[c] for c in text], dtype=np.int64)
    freq = np.bincount(data, minlength=len(chars)) / len(data)
    unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    print(
        f"text: {len(text)} characters, {len(chars)} distinct; unigram entropy "
        f"{unigram:.3f} nats/char"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, backend {args.backend}"
    )

    t0 = time.perf_counter()
    module = compile_gpt(len(chars), args)
    params = module.init_params(seed=args.seed)
    for k in ("embed", "position"):  # N(0, 1) embeddings, scaled down
        params[k] *= np.float32(0.1)
    count = sum(v.size for v in params.values())
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {count} parameters")

    rng = np.random.default_rng(args.seed)
    starts = np.arange(len(data) - args.context)
    windows = starts[:, None] + np.arange(args.context + 1)
    opt = Adam(params, args.lr)
    t0, smooth = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        rows = data[windows[rng.integers(0, len(starts), args.batch)]]
        lr = args.lr * min(1.0, step / 100) * (0.1 + 0.9 * (1 - step / args.steps))
        loss, grads = module.value_and_grad(
            tokens=rows[:, :-1], targets=rows[:, 1:], **params
        )
        opt.step(params, grads, np.float32(lr))
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        if step % max(1, args.steps // 10) == 0 or step == 1:
            print(
                f"step {step:5d}  loss {smooth:.3f}  ({time.perf_counter() - t0:.0f} s)"
            )

    # the loss over every window of the text, in batches
    total, n = 0.0, 0
    for i in range(0, len(starts), args.batch):
        rows = data[windows[i : i + args.batch]]
        loss = module.forward(tokens=rows[:, :-1], targets=rows[:, 1:], **params)[
            "loss"
        ]
        total, n = total + float(loss) * len(rows), n + len(rows)
    print(
        f"final loss {total / n:.3f} nats/char over every window "
        f"(unigram entropy {unigram:.3f}); {time.perf_counter() - t0:.0f} s of training"
    )
    print("sample:")
    print(
        sample(module, params, ids, chars, "Beautiful is", 300, args.context, rng, 0.8)
    )


if __name__ == "__main__":
    main()
