"""Layer lists of the shipped fixed-shape cards, built from the published architectures.

``python -m capsim.spec.model_zoo scenarios/models`` rewrites the shipped ResNet-50, BERT, bge,
EfficientNet-B0 and MobileNet-V2 cards from these builders (``--check`` only compares). Each
layer is one fused kernel of a TensorRT-style engine: convolution + folded BatchNorm + activation
(+ residual add), GEMM + bias, fused attention, one pass per element-wise step.

>>> from capsim.spec.model_layers import layer_costs, totals
>>> t = totals(layer_costs(resnet50(), None))
>>> int(t.params)
25557032
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from capsim.errors import atomic_write_text
from capsim.spec.model_layers import Attention as Attn
from capsim.spec.model_layers import Conv, Elementwise, Embedding, Matmul, Pool

# ----------------------------------------------------------------------------- convolutional


def _conv(name, cin, hw, cout, k, stride=1, groups=1, residual=False, bias=False, bn=True):
    """One conv (+ folded BN: 2 x cout parameters); returns the layer and the output size."""
    out = (hw + 2 * (k // 2) - k) // stride + 1
    layer = Conv(
        name=name, input=(cin, hw, hw), output=(cout, out, out), kernel=(k, k), groups=groups,
        residual=residual, bias=bias, extra_params=2 * cout if bn else 0,
    )  # fmt: skip
    return layer, out


def _head(layers, c, hw, classes=1000):
    layers.append(Pool(name="avgpool", input=(c, hw, hw), output=(c, 1, 1), window=hw * hw))
    layers.append(Matmul(name="fc", m=1, n=classes, k=c))


def resnet50() -> list:
    """torchvision ResNet-50 (v1.5: stride in the 3x3 conv), 224x224 input."""
    layers: list = [Elementwise(name="input_reformat", rows=1, cols=3 * 224 * 224)]
    c, hw = _conv("conv1", 3, 224, 64, 7, 2)
    layers.append(c)
    layers.append(Pool(name="maxpool", input=(64, 112, 112), output=(64, 56, 56), window=9))
    cin, hw = 64, 56
    for stage, (width, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
    ):
        for b in range(blocks):
            s = stride if b == 0 else 1
            p = f"layer{stage}.{b}"
            c1, _ = _conv(f"{p}.conv1", cin, hw, width, 1)
            c2, out = _conv(f"{p}.conv2", width, hw, width, 3, s)
            layers += [c1, c2]
            if b == 0:
                layers.append(_conv(f"{p}.downsample", cin, hw, 4 * width, 1, s)[0])
            layers.append(_conv(f"{p}.conv3", width, out, 4 * width, 1, residual=True)[0])
            cin, hw = 4 * width, out
    _head(layers, cin, hw)
    layers.append(Elementwise(name="output_copy", rows=1, cols=1000))
    return layers


def _inverted_residual(layers, p, cin, hw, cout, expand, k, stride, se: bool, act_flops):
    hidden = cin * expand
    if expand != 1:
        layers.append(_conv(f"{p}.expand", cin, hw, hidden, 1)[0])
    dw, out = _conv(f"{p}.depthwise", hidden, hw, hidden, k, stride, groups=hidden)
    layers.append(dw)
    if se:  # squeeze-excitation: pool, fc (+SiLU), fc (+sigmoid), scale
        sq = max(1, cin // 4)
        layers += [
            Pool(name=f"{p}.se.pool", input=(hidden, out, out), output=(hidden, 1, 1),
                 window=out * out),
            Conv(name=f"{p}.se.reduce", input=(hidden, 1, 1), output=(sq, 1, 1),
                 kernel=(1, 1), bias=True),
            Conv(name=f"{p}.se.expand", input=(sq, 1, 1), output=(hidden, 1, 1),
                 kernel=(1, 1), bias=True),
            Elementwise(name=f"{p}.se.scale", rows=hidden, cols=out * out, inputs=1,
                        flops_per_element=act_flops),
        ]  # fmt: skip
    residual = stride == 1 and cin == cout
    layers.append(_conv(f"{p}.project", hidden, out, cout, 1, residual=residual)[0])
    return out


def mobilenet_v2() -> list:
    """torchvision MobileNet-V2 (width 1.0), 224x224 input."""
    layers: list = [Elementwise(name="input_reformat", rows=1, cols=3 * 224 * 224)]
    c, hw = _conv("stem", 3, 224, 32, 3, 2)
    layers.append(c)
    cin = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip
    i = 0
    for t, cout, n, s in settings:
        for j in range(n):
            hw = _inverted_residual(layers, f"block{i}", cin, hw, cout, t, 3, s if j == 0 else 1,
                                    False, 0.0)  # fmt: skip
            cin, i = cout, i + 1
    layers.append(_conv("head", cin, hw, 1280, 1)[0])
    _head(layers, 1280, hw)
    layers.append(Elementwise(name="output_copy", rows=1, cols=1000))
    return layers


def efficientnet_b0() -> list:
    """torchvision EfficientNet-B0, 224x224 input (MBConv with squeeze-excitation)."""
    layers: list = [Elementwise(name="input_reformat", rows=1, cols=3 * 224 * 224)]
    c, hw = _conv("stem", 3, 224, 32, 3, 2)
    layers.append(c)
    cin = 32
    settings = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # fmt: skip
    i = 0
    for t, k, s, cout, n in settings:
        for j in range(n):
            hw = _inverted_residual(layers, f"block{i}", cin, hw, cout, t, k, s if j == 0 else 1,
                                    True, 1.0)  # fmt: skip
            cin, i = cout, i + 1
    layers.append(_conv("head", cin, hw, 1280, 1)[0])
    _head(layers, 1280, hw)
    layers.append(Elementwise(name="output_copy", rows=1, cols=1000))
    return layers


# ----------------------------------------------------------------------------- BERT encoders


@dataclass(frozen=True)
class BertShape:
    """A BERT-family encoder: layers, hidden size, heads, FFN size."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522
    positions: int = 512
    token_types: int = 2


def bert(shape: BertShape, *, pooler: str) -> list:
    """BERT encoder layers at sequence length ``seq``; ``pooler``: ``tanh`` (BertModel's pooler
    run on [CLS]) or ``normalize`` ([CLS] + L2 normalisation; the checkpoint's pooler weights are
    loaded, counted as the last layer's ``extra_params``, not run)."""
    d, f = shape.hidden, shape.ffn
    layers: list = [
        Embedding(name="embeddings", rows="seq", dim=d, extra_params=2 * d,
                  vocab=(shape.vocab, shape.positions, shape.token_types)),
        Elementwise(name="attention_mask", rows="seq", cols=1),
    ]  # fmt: skip
    for i in range(shape.layers):
        p = f"layer{i}"
        layers += [
            Matmul(name=f"{p}.qkv", m="seq", n=3 * d, k=d),
            Elementwise(name=f"{p}.split_heads", rows="seq", cols=3 * d),
            Attn(name=f"{p}.attention", heads=shape.heads, head_dim=d // shape.heads, q="seq",
                 kv="seq"),
            Matmul(name=f"{p}.attn_out", m="seq", n=d, k=d),
            Elementwise(kind="norm", name=f"{p}.attn_norm", rows="seq", cols=d, inputs=2,
                        flops_per_element=8.0, extra_params=2 * d),
            Matmul(name=f"{p}.ffn_up", m="seq", n=f, k=d),
            Elementwise(name=f"{p}.gelu", rows="seq", cols=f, flops_per_element=8.0),
            Matmul(name=f"{p}.ffn_down", m="seq", n=d, k=f),
            Elementwise(kind="norm", name=f"{p}.ffn_norm", rows="seq", cols=d, inputs=2,
                        flops_per_element=8.0, extra_params=2 * d),
        ]  # fmt: skip
    if pooler == "tanh":
        layers += [Matmul(name="pooler", m=1, n=d, k=d), Elementwise(name="tanh", rows=1, cols=d)]
    else:
        layers.append(Elementwise(name="cls_l2_normalize", rows=1, cols=d, flops_per_element=3.0,
                                  extra_params=d * d + d))  # fmt: skip
    return layers


# ----------------------------------------------------------------------------- the shipped cards

_TV = "pytorch.org/vision/stable/models/generated/torchvision.models"
_ENGINE = (
    "one kernel per layer of a TensorRT-style engine (conv + folded BN + activation + residual "
    "add fused; GEMM + bias; fused attention; one pass per element-wise step)"
)


@dataclass(frozen=True)
class CardSpec:
    """What a shipped card says besides its layers."""

    name: str
    task: str
    input: str
    output: str
    architecture: str
    params_source: str
    flops_source: str
    sequence_length: int | None = None
    max_sequence_length: int | None = None
    seq_source: str | None = None


def _bert_spec(name, task, out, arch, params, seq, seq_source) -> CardSpec:
    return CardSpec(
        name, task, f"{seq} tokens", out, arch, params,
        "sum over the layers: 2 x m x n x k per GEMM, 4 x heads x s^2 x head_dim per fused "
        "attention, small element-wise terms (GELU, LayerNorm, softmax excluded: on chip)",
        seq, 512, seq_source,
    )  # fmt: skip


_BERT_BASE = BertShape(12, 768, 12, 3072)
_BERT_LARGE = BertShape(24, 1024, 16, 4096)
_BGE_SMALL = BertShape(12, 384, 12, 1536)
_SQUAD = (
    "384 tokens: the MLPerf Inference BERT benchmark (SQuAD v1.1, max_seq_length 384) and the "
    "usual SQuAD serving setting; a scenario or `capsim estimate --seq-len` can change it"
)
_BGE_SEQ = (
    "512 tokens: the model's max_seq_length (BAAI/bge-*-en-v1.5 sentence_bert_config.json), "
    "full-length passages; a scenario's sequence_length or `capsim estimate --seq-len` sets "
    "shorter inputs"
)

CARDS: dict[str, tuple[CardSpec, object]] = {
    "resnet-50": (
        CardSpec(
            "resnet-50",
            "image classification (ImageNet-1k)",
            "3x224x224 image",
            "1000 logits",
            f"torchvision ResNet-50 v1.5 (stride in the 3x3 conv), {_TV}"
            ".resnet50.html; He et al. 2016",
            "torchvision ResNet50_Weights num_params 25557032; the layers reproduce it exactly",
            "torchvision 'GFLOPS 4.09' (multiply-accumulates); the layers give 4,089,184,256 "
            "MACs in convs + fc, FLOPs = 2 x MACs plus pooling/reformat element work",
        ),
        resnet50,
    ),
    "mobilenet-v2": (
        CardSpec(
            "mobilenet-v2",
            "image classification (ImageNet-1k)",
            "3x224x224 image",
            "1000 logits",
            f"torchvision MobileNet-V2 (width 1.0), {_TV}.mobilenet_v2.html; Sandler et al. 2018",
            "torchvision MobileNet_V2_Weights num_params 3504872; the layers reproduce it exactly",
            "torchvision 'GFLOPS 0.30' (MACs; the paper's 300M multiply-adds); the layers "
            "give 300,774,272 MACs, FLOPs = 2 x MACs plus element work",
        ),
        mobilenet_v2,
    ),
    "efficientnet-b0": (
        CardSpec(
            "efficientnet-b0",
            "image classification (ImageNet-1k)",
            "3x224x224 image",
            "1000 logits",
            f"torchvision EfficientNet-B0, {_TV}.efficientnet_b0.html; Tan & Le 2019",
            "torchvision EfficientNet_B0_Weights num_params 5288548; the layers "
            "reproduce it exactly",
            "torchvision 'GFLOPS 0.39' (MACs); the layers give 385,814,752 MACs, FLOPs = 2 x "
            "MACs plus element work (SiLU, squeeze-excitation scaling)",
        ),
        efficientnet_b0,
    ),
    "bert-base": (
        _bert_spec(
            "bert-base",
            "text encoder (sequence classification / pooled output)",
            "768-d pooled [CLS] vector",
            "google-bert/bert-base-uncased config.json "
            "(hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 30522, 512 "
            "positions); Devlin et al. 2019",
            "Hugging Face BertModel with pooler: "
            "109,482,240 ('110M' in Devlin et al.); the layers reproduce it exactly",
            384,
            _SQUAD,
        ),
        lambda: bert(_BERT_BASE, pooler="tanh"),
    ),
    "bert-large": (
        _bert_spec(
            "bert-large",
            "text encoder (sequence classification / pooled output)",
            "1024-d pooled [CLS] vector",
            "google-bert/bert-large-uncased config.json "
            "(hidden 1024, 24 layers, 16 heads, intermediate 4096, vocab 30522, 512 "
            "positions); Devlin et al. 2019",
            "Hugging Face BertModel with pooler: "
            "335,141,888 ('340M' in Devlin et al.); the layers reproduce it exactly",
            384,
            _SQUAD,
        ),
        lambda: bert(_BERT_LARGE, pooler="tanh"),
    ),
    "bge-large-en": (
        _bert_spec(
            "bge-large-en",
            "sentence embedding",
            "1024-d L2-normalised embedding ([CLS] pooling)",
            "BAAI/bge-large-en-v1.5 "
            "config.json: BertModel, hidden 1024, 24 layers, 16 heads, intermediate 4096, "
            "vocab 30522, 512 positions (BERT-large shape)",
            "335,141,888 with the "
            "checkpoint's pooler (loaded, not run; 335M on the model card); the layers "
            "reproduce it",
            512,
            _BGE_SEQ,
        ),
        lambda: bert(_BERT_LARGE, pooler="normalize"),
    ),
    "bge-small-en": (
        _bert_spec(
            "bge-small-en",
            "sentence embedding",
            "384-d L2-normalised embedding ([CLS] pooling)",
            "BAAI/bge-small-en-v1.5 "
            "config.json: BertModel, hidden 384, 12 layers, 12 heads, intermediate 1536, "
            "vocab 30522, 512 positions",
            "33,360,000 with the checkpoint's pooler (loaded, "
            "not run; 33.4M on the model card); the layers reproduce it",
            512,
            _BGE_SEQ,
        ),
        lambda: bert(_BGE_SMALL, pooler="normalize"),
    ),
}


def card_yaml(name: str) -> str:
    """The YAML text of one shipped card, generated from its architecture."""
    spec, build = CARDS[name]
    layers = build()  # type: ignore[operator]
    head = [
        f"# {spec.name}: generated by `python -m capsim.spec.model_zoo scenarios/models` (do not edit;",
        "# change capsim/spec/model_zoo.py and regenerate). Totals (params, FLOPs, activation traffic,",
        "# kernels) are sums over the layers below, computed when the card is loaded.",
        f"# Architecture: {spec.architecture}.",
        f"# Layers: {_ENGINE}.",
        "kind: fixed",
        f"name: {spec.name}",
        f"task: {spec.task}",
        f"input: {spec.input}",
        f"output: {spec.output}",
    ]
    if spec.sequence_length:
        head += [
            f"sequence_length: {spec.sequence_length}",
            f"max_sequence_length: {spec.max_sequence_length}",
        ]
    sources = {
        "architecture": spec.architecture,
        "params": spec.params_source,
        "flops_per_sample": spec.flops_source,
        "activation_elements_per_sample": "sum over the layers of input + output (+ residual) "
        "elements per fused kernel; " + _ENGINE,
        "peak_activation_elements_per_sample": "the largest single layer's input + output "
        "(+ residual) elements",
        "kernels_per_forward": "one per layer (assumption of an optimised engine)",
    }
    if spec.seq_source:
        sources["sequence_length"] = spec.seq_source
    head.append("sources:")
    head += [f"  {k}: {json.dumps(v)}" for k, v in sources.items()]
    head.append("layers:")
    for layer in layers:
        d = layer.model_dump(exclude_defaults=True)
        d = {"name": d.pop("name"), "kind": layer.kind, **d}
        head.append("  - " + json.dumps(d, separators=(", ", ": ")))
    return "\n".join(head) + "\n"


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` compare) the generated cards in a directory."""
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if len(args) != 1:
        print("usage: python -m capsim.spec.model_zoo [--check] DIRECTORY", file=sys.stderr)
        return 2
    out, stale = Path(args[0]), []
    for name in CARDS:
        path, text = out / f"{name}.yaml", card_yaml(name)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            atomic_write_text(path, text)
    for s in stale:
        print(
            f"stale: {s} (regenerate with python -m capsim.spec.model_zoo {out})", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
