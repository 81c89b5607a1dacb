"""Small transformers built with PyTorch for the ONNX import tests (issue 15): PyTorch's
own ``nn.TransformerEncoder``, a nanoGPT-style decoder (a causal mask kept as a
registered buffer, the input embedding tied to the output projection), and GPT-2, BERT,
LLaMA and ViT from the ``transformers`` package's configs.

``export(name, path, dynamo)`` writes the model as ONNX (the TorchScript exporter at
opset 17, or the dynamo exporter) and returns the PyTorch reference: the input, labels,
logits, the cross-entropy loss and every parameter's gradient, keyed by PyTorch's
parameter names, with the initializers that hold each parameter (``link``).
Run as a script to regenerate ``tests/fixtures/transformers/``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

VOCAB, WIDTH, HEADS, LAYERS, CONTEXT, BATCH, T = 50, 32, 4, 2, 16, 2, 8
IMAGE, PATCH, CLASSES = 8, 4, 10  # ViT: 3x8x8 images, four 4x4 patches, 10 classes
HERE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fixtures", "transformers"
)
NAMES = ("encoder", "nanogpt")  # committed fixtures (TorchScript exports)
# models from the transformers package: committed fixtures (name -> exported with
# dynamo), and the (name, dynamo) pairs the tests export afresh. LLaMA has no
# TorchScript export: that exporter has no aten::diff (opset 17).
HF_FIXTURES = {"bert": False, "vit": False, "llama": True}
HF_EXPORTS = (
    ("gpt2", True),
    ("bert", False),
    ("bert", True),
    ("vit", False),
    ("vit", True),
    ("llama", True),
)
BUFFERS = ("rotary_emb.inv_freq",)  # registered buffers the dynamo exporter folds


def _torch():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(WIDTH)
            self.attn = nn.Linear(WIDTH, 3 * WIDTH)
            self.proj = nn.Linear(WIDTH, WIDTH)
            self.ln_2 = nn.LayerNorm(WIDTH)
            self.fc = nn.Linear(WIDTH, 4 * WIDTH)
            self.fc_out = nn.Linear(4 * WIDTH, WIDTH)
            mask = torch.tril(torch.ones(CONTEXT, CONTEXT)).view(1, 1, CONTEXT, CONTEXT)
            self.register_buffer("bias", mask)

        def forward(self, x):
            B, L, C = x.shape
            q, k, v = self.attn(self.ln_1(x)).split(WIDTH, dim=2)
            q = q.view(B, L, HEADS, C // HEADS).transpose(1, 2)
            k = k.view(B, L, HEADS, C // HEADS).transpose(1, 2)
            v = v.view(B, L, HEADS, C // HEADS).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :L, :L] == 0, float("-inf"))
            att = torch.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, L, C)
            x = x + self.proj(y)
            h = nn.functional.gelu(self.fc(self.ln_2(x)), approximate="tanh")
            return x + self.fc_out(h)

    class NanoGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, WIDTH)
            self.wpe = nn.Embedding(CONTEXT, WIDTH)
            self.h = nn.ModuleList([Block() for _ in range(LAYERS)])
            self.ln_f = nn.LayerNorm(WIDTH)
            self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
            self.lm_head.weight = self.wte.weight  # tied

        def forward(self, idx):
            pos = torch.arange(idx.shape[1], dtype=torch.long)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            layer = nn.TransformerEncoderLayer(
                WIDTH, HEADS, dim_feedforward=64, dropout=0.0, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(
                layer, LAYERS, enable_nested_tensor=False
            )
            self.head = nn.Linear(WIDTH, VOCAB)

        def forward(self, idx):
            return self.head(self.encoder(self.embed(idx)))

    def hf_model(kind):
        """GPT-2, BERT (masked LM, decoder tied to the word embeddings), LLaMA (RMSNorm,
        rotary embeddings, SwiGLU, grouped-query attention) or ViT (patch embedding,
        class token, image classification) from the ``transformers`` package's configs:
        2 layers, width 32, eager attention."""

        def make():
            import transformers as hf

            common = {"attn_implementation": "eager"}
            if kind == "gpt2":
                config = hf.GPT2Config(
                    n_layer=LAYERS,
                    n_embd=WIDTH,
                    n_head=HEADS,
                    vocab_size=VOCAB,
                    n_positions=CONTEXT,
                    **common,
                )
                lm = hf.GPT2LMHeadModel(config)
            elif kind == "bert":
                config = hf.BertConfig(
                    num_hidden_layers=LAYERS,
                    hidden_size=WIDTH,
                    num_attention_heads=HEADS,
                    intermediate_size=WIDTH,
                    vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT,
                    **common,
                )
                lm = hf.BertForMaskedLM(config)
            elif kind == "llama":
                config = hf.LlamaConfig(
                    num_hidden_layers=LAYERS,
                    hidden_size=WIDTH,
                    num_attention_heads=HEADS,
                    num_key_value_heads=HEADS // 2,
                    intermediate_size=WIDTH,
                    vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT,
                    **common,
                )
                lm = hf.LlamaForCausalLM(config)
            else:
                config = hf.ViTConfig(
                    num_hidden_layers=LAYERS,
                    hidden_size=WIDTH,
                    num_attention_heads=HEADS,
                    intermediate_size=WIDTH,
                    image_size=IMAGE,
                    patch_size=PATCH,
                    num_labels=CLASSES,
                    **common,
                )
                lm = hf.ViTForImageClassification(config)
            if hasattr(lm.config, "use_cache"):
                lm.config.use_cache = False

            class LM(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lm = lm

                def forward(self, x):
                    return self.lm(x, return_dict=False)[0]

            return LM()

        return make

    return torch, {
        "encoder": Encoder,
        "nanogpt": NanoGPT,
        **{kind: hf_model(kind) for kind in ("gpt2", "bert", "llama", "vit")},
    }


def export(name, path, dynamo=False, dtype="float32"):
    """Export model ``name`` to ``path`` in ``dtype``; return its PyTorch reference as
    a dict."""
    torch, models = _torch()
    torch.manual_seed(0)
    model = models[name]().eval().to(getattr(torch, dtype))
    with torch.no_grad():  # distinct random values: no two parameters are equal
        for pname, p in model.named_parameters():
            norm = ("norm" in pname.lower() or "ln_" in pname) and pname.endswith(
                "weight"
            )
            base = 1.0 if norm else 0.0  # a LayerNorm's scale near 1
            p.copy_(base + 0.2 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    if name == "vit":
        feed = "pixels"
        x_np = rng.standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(dtype)
        labels = rng.integers(0, CLASSES, size=(BATCH,))
    else:
        feed = "idx"
        # BERT's padding token 0 gets no gradient from its lookups in PyTorch
        # (``padding_idx``); an ONNX Gather knows no such row, so feed none
        x_np = rng.integers(name == "bert", VOCAB, size=(BATCH, T))
        labels = rng.integers(0, VOCAB, size=(BATCH, T))
    x = torch.tensor(x_np)
    if dynamo:
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=True,
            input_names=[feed],
            output_names=["logits"],
            optimize=True,
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=[feed],
            output_names=["logits"],
        )
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(labels).reshape(-1)
    )
    loss.backward()
    ref = {
        feed: x_np,
        "labels": labels,
        "logits": logits.detach().numpy(),
        "loss": loss.detach().numpy(),
    }
    import onnx
    from onnx import numpy_helper

    onnx_model = onnx.load(path)  # with its external data, if the exporter wrote any
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    for pname, p in model.named_parameters():
        ref[f"grad/{pname}"] = p.grad.numpy()
        value = p.detach().numpy()
        found = [f"{n}|{how}" for n, v in inits.items() if (how := link(v, value))]
        ref[f"link/{pname}"] = np.array(found or [""])
    return ref


def link(init, param):
    """How initializer value ``init`` holds PyTorch parameter value ``param``: "same",
    "transposed", "rows" (its first rows: a lookup the exporter folded), "broadcast:K"
    (its first K rows broadcast to a larger shape: the dynamo exporter folds BERT's
    token-type lookup of zeros and ViT's class token expanded to the batch), or None."""
    if init.dtype.kind != "f" or init.size <= 1:
        return None
    full = init
    while init.ndim > param.ndim and init.shape[0] == 1:  # an unsqueezed lookup
        init = init[0]
    if init.shape == param.shape and np.array_equal(init, param):
        return "same"
    if (
        init.ndim == 2
        and init.shape[::-1] == param.shape
        and np.array_equal(init.T, param)
    ):
        return "transposed"
    if (
        init.ndim == param.ndim >= 2
        and init.shape[1:] == param.shape[1:]
        and init.shape[0] < param.shape[0]
        and np.array_equal(init, param[: init.shape[0]])
    ):
        return "rows"
    if full.ndim < param.ndim:
        return None
    k = full.shape[full.ndim - param.ndim]
    for rows in sorted({k, 1}):
        block = param[:rows]
        if block.size <= 1 or rows > param.shape[0]:
            continue
        try:
            spread = np.broadcast_to(block, full.shape)
        except ValueError:
            continue
        if np.array_equal(spread, full):
            return f"broadcast:{rows}"
    return None


def from_buffers(path):
    """The initializers of the ONNX model at ``path`` that the dynamo exporter folded
    from a registered buffer (LLaMA's rotary cos/sin tables from ``inv_freq``): its
    metadata names a buffer like a weight, so the test gives them to ``freeze``."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return sorted(
        vi.name
        for vi in model.graph.value_info
        for prop in vi.metadata_props
        if prop.key == "pkg.onnxscript.optimizer.folded_from"
        and any(b in prop.value for b in BUFFERS)
    )


def to_param(grad, how, shape):
    """The gradient of initializer ``grad`` (linked to a parameter of ``shape`` as
    ``link`` says ``how``), in the parameter's layout, zero outside the rows it holds."""
    out = np.zeros(shape, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if how.startswith("broadcast:"):
        rows = int(how.partition(":")[2])
        block = (rows, *shape[1:])
        grad = grad.sum(axis=tuple(range(grad.ndim - len(block))))
        axes = tuple(i for i, n in enumerate(block) if n == 1 and grad.shape[i] != 1)
        out[:rows] = grad.sum(axis=axes, keepdims=True)
        return out
    while grad.ndim > len(shape) and grad.shape[0] == 1:  # an unsqueezed lookup
        grad = grad[0]
    if how == "transposed":
        out += grad.T
    elif how == "rows":
        out[: grad.shape[0]] = grad
    else:
        out += grad
    return out


def one_file(path):
    """Rewrite the model at ``path`` as one file without the exporter's per-node
    metadata (stack traces): a small fixture, its weights inside."""
    import onnx

    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, path, save_as_external_data=False)
    data = path + ".data"
    if os.path.exists(data):
        os.remove(data)


if __name__ == "__main__":  # pragma: no cover - regenerates the fixtures
    os.makedirs(HERE, exist_ok=True)
    fixtures = dict.fromkeys(NAMES, False) | HF_FIXTURES
    for name in sys.argv[1:] or fixtures:
        path = os.path.join(HERE, f"{name}.onnx")
        ref = export(name, path, dynamo=fixtures[name])
        if fixtures[name]:
            one_file(path)
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **ref)
