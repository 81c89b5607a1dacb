"""Write scikit-learn's handwritten digits as the .npz files `graphgen train` reads.

    python examples/make_digits.py [OUT_DIR]     # default: digits/

``sklearn.datasets.load_digits`` reads the 1,797 8x8 images from a file inside the
package (no download). Pixels are scaled to [0, 1]; the split is fixed (a permutation
from seed 0): 1,257 train, 270 val, 270 test. Each directory gets ``train.npz``,
``val.npz``, ``test.npz`` with ``x`` of shape (N, 64) for the MLP and ``cnn_*.npz``
with ``x`` of shape (N, 1, 8, 8) for the CNN; ``labels`` (N,) int64 in both.
"""

from __future__ import annotations

import os
import sys

import numpy as np


def split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float64)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, val, test = order[:1257], order[1257:1527], order[1527:]
    return {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (x[test], y[test]),
    }


def main(out="digits"):
    os.makedirs(out, exist_ok=True)
    for name, (x, y) in split().items():
        np.savez(os.path.join(out, f"{name}.npz"), x=x, labels=y)
        np.savez(
            os.path.join(out, f"cnn_{name}.npz"), x=x.reshape(-1, 1, 8, 8), labels=y
        )
    print(f"wrote {out}/{{train,val,test}}.npz and {out}/cnn_{{train,val,test}}.npz")


if __name__ == "__main__":
    main(*sys.argv[1:])
