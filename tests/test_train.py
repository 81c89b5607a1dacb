"""``graphgen train``: the run directory, resuming bit-identically, bad data, a
non-finite loss, Ctrl-C, and the digits MLP reaching 97% test accuracy."""

from __future__ import annotations

import csv
import json
import os
import signal

import numpy as np
import pytest
from conftest import EXAMPLES

pytest.importorskip("tqdm", reason="the training extra (tqdm) is not installed")
pytest.importorskip(
    "matplotlib", reason="the training extra (matplotlib) is not installed"
)

from graphgen.training import loop

MLP = EXAMPLES / "digits_mlp.yaml"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHGEN_CACHE_DIR", str(tmp_path / "cache"))


def synthetic(path, n=150, seed=0, **changes):
    """Digits-shaped arrays whose labels a linear model can learn."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 64))
    labels = (x[:, :10].argmax(axis=1)).astype(np.int64)
    arrays = {"x": x, "labels": labels}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def run(tmp_path, out, **kw):
    data = synthetic(tmp_path / "train.npz")
    val = synthetic(tmp_path / "val.npz", n=40, seed=1)
    settings = {"epochs": 3, "batch_size": 32}
    settings["optimizer"] = {"name": "adam", "lr": 0.01}
    settings.update(kw)
    return loop.train(
        MLP, data, val=val, out=out, progress=False, log=lambda *a: None, **settings
    )


def checkpoint_bytes(out):
    with open(out / loop.CHECKPOINT, "rb") as f:
        return f.read()


def test_a_run_writes_history_curves_and_checkpoint(tmp_path):
    record = run(tmp_path, tmp_path / "run")
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == sorted(
        [loop.CHECKPOINT, loop.RUN, loop.HISTORY, loop.CURVES]
    )
    with open(out / loop.HISTORY) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "grad_norm/W1"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert int(rows[-1]["step"]) == 3 * 5  # ceil(150 / 32) steps an epoch
    assert record["epoch"] == 3
    with open(out / loop.CURVES, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_ends_bit_identical(tmp_path, stop_after=7):
    whole = tmp_path / "whole"
    run(tmp_path, whole, optimizer={"name": "adamw", "schedule": "cosine"})
    cut = tmp_path / "cut"
    record = run(
        tmp_path,
        cut,
        optimizer={"name": "adamw", "schedule": "cosine"},
        stop_after=stop_after,
    )
    assert record["interrupted"]
    assert checkpoint_bytes(cut) != checkpoint_bytes(whole)
    loop.train(None, None, out=cut, resume=True, progress=False, log=lambda *a: None)
    assert checkpoint_bytes(cut) == checkpoint_bytes(whole)
    with open(cut / loop.RUN) as f, open(whole / loop.RUN) as g:
        a, b = json.load(f)["history"], json.load(g)["history"]
    for r, s in zip(a, b):  # the same numbers but for the time taken
        r = {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
        s = {k: v for k, v in s.items() if k not in ("seconds", "samples_per_s")}
        assert r == s


def test_ctrl_c_is_acted_on_between_steps():
    with loop._Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.hit
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


EXPLODING = """\
name: exploding
inputs:
  x: [batch, 64]
  labels: {shape: [batch], dtype: int64}
params:
  W: [64, 10]
nodes:
  z: {op: matmul, args: [x, W]}
  e: {op: exp, args: [z]}
  loss: {op: softmax_cross_entropy, args: [e, labels]}
outputs: [loss]
loss: loss
"""


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    spec = tmp_path / "exploding.yaml"
    spec.write_text(EXPLODING)
    out = tmp_path / "run"
    with pytest.raises(
        loop.TrainingError, match=r"the loss is (nan|inf) at step \d+"
    ) as e:
        loop.train(
            spec,
            synthetic(tmp_path / "train.npz"),
            out=out,
            epochs=3,
            optimizer={"name": "sgd", "lr": 1e4},
            progress=False,
            log=lambda *a: None,
        )
    assert "keeps the last good checkpoint (step 0)" in str(e.value)
    # the checkpoint on disk is the last good one: finite, the initial params
    from graphgen.codegen import optim

    _, m = loop.compile_cached(spec, "numpy", optim.optimizer("sgd", lr=1e4))
    params, _ = m.load_checkpoint(out / loop.CHECKPOINT)
    np.testing.assert_array_equal(params["W"], m.init_params(seed=0)["W"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"labels": None},
            r"train.npz: no array 'labels' \(expected shape \(N\) int64\)",
        ),
        (
            {"x": np.zeros((150, 63))},
            r"array 'x' has shape \(150, 63\), expected shape \(N, 64\)",
        ),
        (
            {"labels": np.zeros(150)},
            r"array 'labels' is float64, expected integer labels",
        ),
        (
            {"labels": np.full(150, 10)},
            r"array 'labels' has label 10 at index 0, expected labels in \[0, 10\)",
        ),
        (
            {"labels": np.zeros(149, dtype=np.int64)},
            r"array 'labels' has 149 examples, the others 150",
        ),
        (
            {"x": np.full((150, 64), np.nan)},
            r"array 'x' has a non-finite value at index \(0, 0\)",
        ),
    ],
    ids=["missing", "shape", "dtype", "label-range", "count", "nan"],
)
def test_bad_data_is_one_error_line_naming_the_array(cli, tmp_path, changes, message):
    data = synthetic(tmp_path / "train.npz", **changes)
    status, _, err = cli(
        "train", MLP, "--data", data, "-o", tmp_path / "run", "--no-progress"
    )
    assert status == 2
    assert err.startswith("graphgen: error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err


def test_the_digits_mlp_reaches_97_percent_test_accuracy(cli, tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (the test extra) not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_digits", EXAMPLES / "make_digits.py"
    )
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.main(str(tmp_path / "digits"))
    d = tmp_path / "digits"
    status, _, _ = cli(
        "train",
        MLP,
        "--data",
        d / "train.npz",
        "--val",
        d / "val.npz",
        "--test",
        d / "test.npz",
        "--epochs",
        "20",
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "-o",
        tmp_path / "run",
        "--no-progress",
    )
    assert status == 0
    record = json.loads((tmp_path / "run" / loop.RUN).read_text())
    assert record["test"]["accuracy"] >= 0.97, record["test"]
