"""Small transformers built with PyTorch for the ONNX import tests (issue 15): PyTorch's
own ``nn.TransformerEncoder`` and a nanoGPT-style decoder (a causal mask kept as a
registered buffer, the input embedding tied to the output projection).

``export(name, path)`` writes the model as ONNX (the TorchScript exporter, opset 17)
and returns the PyTorch reference: the inputs, logits, the cross-entropy loss on fixed
labels and every parameter's gradient, keyed by the ONNX initializer names.
Run as a script to regenerate ``tests/fixtures/transformers/``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

VOCAB, WIDTH, HEADS, LAYERS, CONTEXT, BATCH, T = 50, 32, 4, 2, 16, 2, 8
HERE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fixtures", "transformers"
)
NAMES = ("encoder", "nanogpt")  # the committed fixtures
HF_NAMES = ("gpt2",)  # from the transformers package, exported with dynamo


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

    def causal_lm(kind):
        """GPT-2 or LLaMA (RMSNorm, rotary embeddings, SwiGLU, grouped-query
        attention) from the ``transformers`` package's configs: 2 layers, width 32."""

        def make():
            import transformers as hf

            if kind == "gpt2":
                config = hf.GPT2Config(
                    n_layer=LAYERS,
                    n_embd=WIDTH,
                    n_head=HEADS,
                    vocab_size=VOCAB,
                    n_positions=CONTEXT,
                )
                lm = hf.GPT2LMHeadModel(config)
            else:
                config = hf.LlamaConfig(
                    num_hidden_layers=LAYERS,
                    hidden_size=WIDTH,
                    num_attention_heads=HEADS,
                    num_key_value_heads=HEADS // 2,
                    intermediate_size=2 * WIDTH,
                    vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT,
                )
                lm = hf.LlamaForCausalLM(config)
            lm.config.use_cache = False

            class LM(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lm = lm

                def forward(self, idx):
                    return self.lm(idx, use_cache=False, return_dict=False)[0]

            return LM()

        return make

    return torch, {
        "encoder": Encoder,
        "nanogpt": NanoGPT,
        "gpt2": causal_lm("gpt2"),
        "llama": causal_lm("llama"),
    }


def export(name, path, dynamo=False):
    """Export model ``name`` to ``path``; return its PyTorch reference as a dict."""
    torch, models = _torch()
    torch.manual_seed(0)
    model = models[name]().eval()
    with torch.no_grad():  # distinct random values: no two parameters are equal
        for pname, p in model.named_parameters():
            norm = ("norm" in pname or "ln_" in pname) and pname.endswith("weight")
            base = 1.0 if norm else 0.0  # a LayerNorm's scale near 1
            p.copy_(base + 0.2 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(BATCH, T))
    labels = rng.integers(0, VOCAB, size=(BATCH, T))
    x = torch.tensor(ids)
    if dynamo:
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=True,
            input_names=["idx"],
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
            input_names=["idx"],
            output_names=["logits"],
        )
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), torch.tensor(labels).reshape(-1)
    )
    loss.backward()
    ref = {
        "idx": ids,
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
    "transposed", "rows" (its first rows: a lookup the exporter folded), or None."""
    if init.dtype.kind != "f" or init.size <= 1:
        return None
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
    return None


if __name__ == "__main__":  # pragma: no cover - regenerates the fixtures
    os.makedirs(HERE, exist_ok=True)
    for name in sys.argv[1:] or NAMES:
        ref = export(name, os.path.join(HERE, f"{name}.onnx"))
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **ref)
