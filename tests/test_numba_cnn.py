"""The Numba backend's loop kernels for convolution, pooling and batch normalization
(templates/numba/helpers/*.py.j2, overriding the NumPy helpers in Numba modules) against
the NumPy backend: forward values and value_and_grad over many attribute combinations,
float64 to 1e-10, and a small CNN end to end.

Each test builds one graph with many branches (one per attribute combination), so that
one Numba module — one compilation of each loop kernel — covers them all.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_graph

import graphgen

pytest.importorskip("numba")

RTOL = 1e-10


def branches(cases, dtype="float64"):
    """One branch per case ``(op, x_shape, w_shape or None, attrs)``:
    ``y_i = op(x_i[, w_i])``, loss = Σ_i sum(y_i · r_i); every input is in WRT."""
    arrays, nodes, wrt = {}, [], []
    for i, (op, x_shape, w_shape, attrs) in enumerate(cases):
        arrays[f"x{i}"] = ("input", x_shape)
        args = [f"x{i}"]
        if w_shape is not None:
            arrays[f"w{i}"] = ("param", w_shape)
            args.append(f"w{i}")
        nodes.append((f"y{i}", op, args, attrs))
    G = build_graph(arrays, nodes, outputs=[f"y{i}" for i in range(len(cases))])
    shapes = graphgen.prepare(G).nodes
    losses = []
    for i in range(len(cases)):
        arrays[f"r{i}"] = ("input", shapes[f"y{i}"]["shape"])
        nodes += [
            (f"yr{i}", "mul", [f"y{i}", f"r{i}"], {}),
            (f"l{i}", "sum", [f"yr{i}"], {}),
        ]
        losses.append(f"l{i}")
    nodes.append(("loss", "add_n", losses, {}))
    wrt = [a for a in arrays if a[0] in "xw"]
    outputs = [f"y{i}" for i in range(len(cases))] + ["loss"]
    return build_graph(
        arrays, nodes, loss="loss", outputs=outputs, wrt=wrt, dtype=dtype, name="cnn"
    )


def random_arrays(module, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in {**module.INPUTS, **module.PARAMS}.items():
        dtype = module.DTYPES[name]
        a = rng.standard_normal([3 if isinstance(d, str) else d for d in shape])
        if ties:  # a coarse grid: equal values inside pooling windows
            a = np.round(a * 2) / 2
        arrays[name] = a.astype(dtype)
    return arrays


def compare(G, rtol=RTOL, ties=False, **kw):
    """Forward and value_and_grad of the NumPy and Numba modules of G agree."""
    ref = graphgen.compile(G)
    nb = graphgen.compile(G, backend="numba", **kw)
    arrays = random_arrays(ref, ties=ties)
    fr, fn = ref.forward(**arrays), nb.forward(**arrays)
    assert fr.keys() == fn.keys()
    for k in fr:
        np.testing.assert_allclose(fn[k], fr[k], rtol=rtol, atol=rtol, err_msg=k)
    (lr, gr), (ln, gn) = ref.value_and_grad(**arrays), nb.value_and_grad(**arrays)
    np.testing.assert_allclose(ln, lr, rtol=rtol)
    assert gr.keys() == gn.keys()
    for k in gr:
        scale = max(1.0, float(np.abs(gr[k]).max()))
        np.testing.assert_allclose(
            gn[k], gr[k], rtol=rtol, atol=rtol * scale, err_msg=k
        )
    return nb


def conv(x, w, **attrs):
    return ("conv", x, w, attrs)


CONVS = [
    # batched path (few output positions): padding, strides, dilations, groups
    conv((2, 3, 9, 9), (4, 3, 3, 3)),
    conv((2, 3, 9, 8), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    conv((2, 3, 9, 9), (5, 3, 3, 2), strides=[2, 1]),
    conv((1, 2, 10, 9), (3, 2, 3, 3), dilations=[2, 3], pads=[2, 1, 2, 1]),
    conv((2, 4, 7, 7), (6, 2, 3, 3), groups=2, pads=[1, 1, 1, 1]),
    conv((2, 4, 8, 8), (4, 1, 3, 3), groups=4, strides=[2, 2], pads=[1, 1, 1, 1]),
    conv((2, 8, 6, 6), (5, 8, 1, 1)),
    conv((2, 8, 7, 7), (5, 8, 1, 1), strides=[2, 2]),
    conv((1, 3, 8, 7), (2, 3, 3, 3), pads=[0, 1, 2, 0]),
    conv((2, 3, 8, 8), (4, 3, 2, 2), auto_pad="SAME_UPPER"),
    conv((2, 3, 7, 7), (4, 3, 3, 3), pads=[3, 0, 0, 3], strides=[3, 2]),
    # stride 1, as wide as x: im2col's shifted plane copies (with width dilation too)
    conv((2, 3, 9, 9), (4, 3, 3, 3), dilations=[1, 2], pads=[1, 2, 1, 2]),
    conv((2, 3, 6, 5), (2, 3, 5, 3), pads=[3, 1, 0, 1]),
    conv((1, 2, 4, 4), (2, 2, 3, 3), pads=[5, 1, 5, 1]),
    # per-sample path (>= 2048 output positions, batch > 1)
    conv((2, 3, 46, 46), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    conv((2, 4, 46, 48), (6, 2, 3, 3), groups=2, pads=[2, 0, 1, 2], dilations=[2, 1]),
    conv((2, 3, 45, 47), (4, 3, 1, 1)),
    conv((2, 3, 91, 47), (4, 3, 1, 1), strides=[2, 1]),
    conv((3, 4, 48, 48), (4, 2, 3, 3), groups=2),
    # the thresholds between them: an unpadded 1x1 stride-1 kernel is per sample at any
    # size (its weight gradient from 512 positions), an input gradient from 128
    conv((2, 6, 5, 5), (4, 3, 1, 1), groups=2),
    conv((2, 3, 12, 14), (4, 3, 1, 1)),
    conv((2, 3, 24, 25), (4, 3, 1, 1)),
    conv((2, 3, 14, 14), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    conv((3, 4, 23, 9), (4, 2, 2, 3), groups=2, strides=[1, 2], pads=[0, 1, 1, 0]),
    # column stride > 1, kernel wider than it, >= 16 output columns: im2col splits each
    # row of x into its phases (batched, per sample, with dilation, 1-D)
    conv((2, 3, 20, 37), (4, 3, 3, 5), strides=[1, 2], pads=[1, 2, 0, 1]),
    conv(
        (2, 2, 9, 60), (3, 2, 2, 4), strides=[2, 3], dilations=[1, 2], pads=[0, 3, 1, 0]
    ),
    conv((2, 3, 70, 130), (4, 3, 3, 3), strides=[1, 2], pads=[1, 1, 1, 1]),
    conv((2, 3, 50), (4, 3, 5), strides=[2], pads=[2, 1]),
    # 1-D (batched and per-sample), 3-D (NumPy's path)
    conv((2, 3, 11), (4, 3, 3), pads=[1, 2], strides=[2]),
    conv((2, 3, 2100), (2, 3, 5), dilations=[2], pads=[3, 0]),
    conv((2, 3, 2100), (2, 3, 3), pads=[1, 1]),
    conv((2, 4, 2100), (4, 2, 1), groups=2),
    conv((2, 2, 4, 5, 4), (3, 2, 2, 3, 2), pads=[1, 0, 1, 0, 1, 1]),
]


def test_conv_kernels_match_numpy():
    nb = compare(branches(CONVS))
    src = nb.__source__
    for kernel in ("_nb_im2col_2d", "_nb_col2im_2d"):
        assert f'@numba.njit(cache=_CACHE, error_model="numpy")\ndef {kernel}(' in src


def pool(op, x, **attrs):
    return (op, x, None, attrs)


def pools(op, extra=()):
    k3 = {"kernel_shape": [3, 3]}
    return [
        pool(op, (2, 3, 8, 8), **k3),
        pool(op, (2, 3, 9, 9), **k3, strides=[2, 2], pads=[1, 1, 1, 1]),
        pool(op, (2, 2, 10, 9), **k3, strides=[2, 3], pads=[0, 1, 2, 1], ceil_mode=1),
        pool(op, (1, 2, 11, 11), **k3, dilations=[2, 2], pads=[2, 2, 2, 2]),
        pool(op, (2, 2, 9, 10), kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1]),
        pool(op, (2, 2, 8, 8), kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1),
        pool(op, (2, 2, 7, 7), kernel_shape=[7, 7]),
        pool(op, (2, 2, 13), kernel_shape=[3], strides=[2], pads=[1, 2], ceil_mode=1),
        pool(op, (2, 2, 4, 5, 4), kernel_shape=[2, 2, 2], pads=[1, 0, 1, 0, 1, 1]),
        *extra,
    ]


def test_max_pool_kernels_match_numpy():
    nb = compare(branches(pools("max_pool")))
    assert "def _nb_max_pool_2d(" in nb.__source__
    # the pool and its gradient run one loop kernel, compiled once (one signature)
    assert len(nb._nb_max_pool_2d.signatures) == 1


def test_max_pool_ties_route_like_numpy():
    # equal values in a window: the gradient goes to the first maximum, as in NumPy
    compare(branches(pools("max_pool")[:6]), ties=True)


def test_avg_pool_kernels_match_numpy():
    extra = [
        pool(
            "avg_pool",
            (2, 3, 9, 9),
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        pool(
            "avg_pool",
            (2, 2, 10, 9),
            kernel_shape=[3, 3],
            strides=[2, 3],
            pads=[0, 1, 2, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
        pool(
            "avg_pool",
            (2, 2, 13),
            kernel_shape=[4],
            strides=[3],
            pads=[2, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
    ]
    nb = compare(branches(pools("avg_pool", extra)))
    assert "def _nb_avg_pool_2d(" in nb.__source__
    assert len(nb._nb_avg_pool_2d.signatures) == 1  # the pool's and its gradient's


def positive_variances(arrays):
    for name in arrays:
        if name.startswith("var"):
            arrays[name] = np.abs(arrays[name]) + 0.5
    return arrays


def compare_with(G, rtol=RTOL, **kw):
    """compare() with positive variances for batch_norm."""
    ref = graphgen.compile(G)
    nb = graphgen.compile(G, backend="numba", **kw)
    arrays = positive_variances(random_arrays(ref))
    fr, fn = ref.forward(**arrays), nb.forward(**arrays)
    for k in fr:
        np.testing.assert_allclose(fn[k], fr[k], rtol=rtol, atol=rtol, err_msg=k)
    (lr, gr), (ln, gn) = ref.value_and_grad(**arrays), nb.value_and_grad(**arrays)
    np.testing.assert_allclose(ln, lr, rtol=rtol)
    for k in gr:
        scale = max(1.0, float(np.abs(gr[k]).max()))
        np.testing.assert_allclose(
            gn[k], gr[k], rtol=rtol, atol=rtol * scale, err_msg=k
        )
    return nb


@pytest.mark.parametrize("shapes", [[(2, 3, 5, 4), (3, 4, 7), (4, 5)]])
def test_batch_norm_kernels_match_numpy(shapes):
    arrays, nodes, losses = {}, [], []
    for i, shape in enumerate(shapes):
        c = shape[1]
        arrays[f"x{i}"] = ("input", shape)
        arrays[f"r{i}"] = ("input", shape)
        for p in ("scale", "bias", "mean", "var"):
            arrays[f"{p}{i}"] = ("param", (c,))
        args = [f"{p}{i}" for p in ("x", "scale", "bias", "mean", "var")]
        nodes += [
            (f"y{i}", "batch_norm", args, {"epsilon": 1e-5}),
            (f"yr{i}", "mul", [f"y{i}", f"r{i}"], {}),
            (f"l{i}", "sum", [f"yr{i}"], {}),
        ]
        losses.append(f"l{i}")
    nodes.append(("loss", "add_n", losses, {}))
    wrt = [a for a in arrays if not a.startswith("r")]
    G = build_graph(
        arrays,
        nodes,
        loss="loss",
        outputs=["loss"] + [f"y{i}" for i in range(3)],
        wrt=wrt,
    )
    nb = compare_with(G)
    assert "def _nb_channel_affine(" in nb.__source__
    assert "def _nb_channel_dot(" in nb.__source__


def resnet_block(dtype):
    """conv-bn-relu, max pool, a bottleneck block with a strided 1×1 shortcut, global
    average pool, a linear layer and softmax cross-entropy: ResNet's ops in small."""
    arrays = {
        "x": ("input", ("batch", 3, 24, 24)),
        "labels": ("input", ("batch",), "int64"),
        "w1": ("param", (8, 3, 3, 3)),
        "wa": ("param", (4, 8, 1, 1)),
        "wb": ("param", (4, 4, 3, 3)),
        "wc": ("param", (16, 4, 1, 1)),
        "ws": ("param", (16, 8, 1, 1)),
        "fc": ("param", (16, 5)),
    }
    nodes = [("c1", "conv", ["x", "w1"], {"pads": [1, 1, 1, 1]})]

    def bn(name, src, c):
        for p in ("scale", "bias", "mean", "var"):
            arrays[f"{p}_{name}"] = ("param", (c,))
        args = [src] + [f"{p}_{name}" for p in ("scale", "bias", "mean", "var")]
        nodes.append((name, "batch_norm", args, {"epsilon": 1e-5}))

    bn("b1", "c1", 8)
    nodes += [
        ("a1", "relu", ["b1"], {}),
        (
            "p1",
            "max_pool",
            ["a1"],
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        ),
        ("ca", "conv", ["p1", "wa"], {}),
    ]
    bn("ba", "ca", 4)
    nodes += [
        ("aa", "relu", ["ba"], {}),
        ("cb", "conv", ["aa", "wb"], {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ]
    bn("bb", "cb", 4)
    nodes += [("ab", "relu", ["bb"], {}), ("cc", "conv", ["ab", "wc"], {})]
    bn("bc", "cc", 16)
    nodes.append(("cs", "conv", ["p1", "ws"], {"strides": [2, 2]}))
    bn("bs", "cs", 16)
    nodes += [
        ("sum", "add", ["bc", "bs"], {}),
        ("out", "relu", ["sum"], {}),
        ("gap", "avg_pool", ["out"], {"kernel_shape": [6, 6]}),
        ("flat", "reshape", ["gap"], {"shape": [-1, 16]}),
        ("logits", "matmul", ["flat", "fc"], {}),
        ("loss", "softmax_cross_entropy", ["logits", "labels"], {}),
    ]
    return build_graph(
        arrays, nodes, loss="loss", outputs=["logits", "loss"], dtype=dtype
    )


@pytest.mark.parametrize("dtype, rtol", [("float64", RTOL), ("float32", 2e-5)])
def test_small_resnet_end_to_end(dtype, rtol):
    G = resnet_block(dtype)
    ref = graphgen.compile(G)
    nb = graphgen.compile(G, backend="numba")
    src = nb.__source__
    for kernel in (
        "_nb_im2col_2d",
        "_nb_col2im_2d",
        "_nb_max_pool_2d",
        "_nb_channel_affine",
        "_nb_channel_dot",
    ):
        assert f"def {kernel}(" in src
    rng = np.random.default_rng(1)
    arrays = positive_variances(random_arrays(ref, seed=1))
    arrays["labels"] = rng.integers(0, 5, 3)
    (lr, gr), (ln, gn) = ref.value_and_grad(**arrays), nb.value_and_grad(**arrays)
    np.testing.assert_allclose(ln, lr, rtol=rtol)
    for k in gr:
        assert gn[k].dtype == np.dtype(dtype)
        scale = float(np.abs(gr[k]).max())
        np.testing.assert_allclose(
            gn[k], gr[k], rtol=rtol, atol=rtol * scale, err_msg=k
        )
    # the global average pool takes NumPy's slab path: its loop kernels, which would
    # compile for ~1 s each on a cold cache, are never compiled
    assert not nb._nb_avg_pool_2d.signatures


def test_small_vector_groups_stay_numpy():
    # batch norm's per-channel arithmetic: a fused group over a static vector would be
    # a kernel that compiles for ~0.2-0.4 s to save microseconds; it stays NumPy code,
    # while a matrix group, however small, is still a kernel
    arrays = {"x": ("input", (3, 16)), "s": ("param", (16,)), "b": ("param", (16,))}
    nodes = [
        ("v1", "add", ["s", "b"], {}),
        ("v2", "mul", ["v1", "s"], {}),
        ("v3", "tanh", ["v2"], {}),
        ("h", "mul", ["x", "v3"], {}),
        ("h2", "relu", ["h"], {}),
        ("h3", "add", ["h2", "x"], {}),
        ("loss", "sum", ["h3"], {}),
    ]
    G = build_graph(arrays, nodes, loss="loss", outputs=["v3", "h3", "loss"])
    nb = compare(G, whole=False)
    src = nb.__source__
    assert "One loop nest over (3, 16)" in src
    assert "loop nest over (16,)" not in src  # main's module had three such kernels
