"""Training with a generated ``train_step``: ``graphgen train`` and :func:`train`.

Needs the ``training`` extra (tqdm for progress bars, matplotlib for ``curves.png``);
both are imported when a run needs them, with an error naming the extra when missing.
"""

from .loop import train

__all__ = ["train"]
