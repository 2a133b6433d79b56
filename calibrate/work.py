"""Work done by one call of each kernel: FLOPs and the minimum bytes moved (for a roofline).

Conventions (also in README.md):
- a multiply-add counts as 2 FLOPs; softmax, normalisation and activations are not counted;
- bytes are the compulsory traffic: every input read once and every output written once;
- causal attention counts only the lower triangle (the work a flash kernel does).
"""

from __future__ import annotations

from dataclasses import dataclass

#: bytes per element of the inputs and of the output of a GEMM, per precision.
ELEMENT_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
OUTPUT_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8": 4}

#: ResNet-50 at 224x224: multiply-accumulates per image and parameter count (torchvision).
RESNET50_MACS = 4.089e9
RESNET50_PARAMS = 25_557_032


def gemm(m: int, n: int, k: int, precision: str) -> tuple[int, int]:
    """FLOPs and bytes of C[m,n] = A[m,k] @ B[k,n]."""
    e, out = ELEMENT_BYTES[precision], OUTPUT_BYTES[precision]
    return 2 * m * n * k, (m * k + k * n) * e + m * n * out


def copy(buffer_bytes: int) -> tuple[int, int]:
    """A device copy reads and writes the buffer once."""
    return 0, 2 * buffer_bytes


def read(buffer_bytes: int, element_bytes: int = 4) -> tuple[int, int]:
    """A sum reads the buffer once and adds every element."""
    return buffer_bytes // element_bytes, buffer_bytes


def attention_decode(
    batch: int, seq_len: int, heads: int, head_dim: int, precision: str
) -> tuple[int, int]:
    """One query per sequence against a KV cache of ``seq_len``: q.K^T, softmax, .V."""
    e = ELEMENT_BYTES[precision]
    flops = 4 * batch * heads * seq_len * head_dim
    kv = 2 * batch * heads * seq_len * head_dim
    return flops, (kv + 2 * batch * heads * head_dim) * e


def attention_prefill(
    batch: int, seq_len: int, heads: int, head_dim: int, precision: str
) -> tuple[int, int]:
    """Causal self-attention over a prompt: lower triangle of q.K^T and of P.V."""
    e = ELEMENT_BYTES[precision]
    flops = 2 * batch * heads * head_dim * seq_len * (seq_len + 1)
    return flops, 4 * batch * heads * seq_len * head_dim * e


def block_weights(hidden: int, ffn: int) -> int:
    """Parameters of one transformer block: QKV, output projection, gated MLP, two RMSNorms."""
    return 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden


def forward_block(
    batch: int, seq_len: int, hidden: int, heads: int, ffn: int, precision: str
) -> tuple[int, int]:
    """A pre-norm decoder block over ``batch`` prompts of ``seq_len`` tokens."""
    e = ELEMENT_BYTES[precision]
    tokens = batch * seq_len
    matmul = 2 * tokens * (4 * hidden * hidden + 3 * hidden * ffn)
    attn, _ = attention_prefill(batch, seq_len, heads, hidden // heads, precision)
    return matmul + attn, (block_weights(hidden, ffn) + 2 * tokens * hidden) * e


def resnet50(batch: int, precision: str) -> tuple[int, int]:
    """Approximate: 2 x MACs per image; weights, input images and logits once."""
    e = ELEMENT_BYTES[precision]
    flops = round(2 * RESNET50_MACS * batch)
    return flops, (RESNET50_PARAMS + batch * (3 * 224 * 224 + 1000)) * e


def launch() -> tuple[int, int]:
    """One tiny element-wise add of two fp32 scalars."""
    return 1, 12


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output height/width of a convolution with padding ``(kernel - 1) // 2``.

    >>> conv_out(224, 7, 2), conv_out(56, 3, 2), conv_out(56, 1, 1)
    (112, 28, 56)
    """
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def conv2d(
    batch: int,
    cin: int,
    cout: int,
    height: int,
    width: int,
    kernel: int,
    stride: int,
    groups: int,
    precision: str,
) -> tuple[int, int]:
    """2·MACs; input, weights and output once (no bias).

    >>> conv2d(1, 64, 64, 56, 56, 1, 1, 1, "bf16")
    (25690112, 811008)
    """
    e = ELEMENT_BYTES[precision]
    ho, wo = conv_out(height, kernel, stride), conv_out(width, kernel, stride)
    weights = cout * (cin // groups) * kernel * kernel
    flops = 2 * batch * ho * wo * weights
    return flops, (batch * cin * height * width + weights + batch * cout * ho * wo) * e


@dataclass(frozen=True)
class LlmShape:
    """A decoder-only model (Llama-style: GQA attention, gated SiLU MLP, untied LM head)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    def layer_matmul_weights(self) -> int:
        """Weights of the GEMMs of one layer: QKV, output projection, gate/up/down."""
        qkv = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        return qkv + self.heads * self.head_dim * self.hidden + 3 * self.hidden * self.ffn

    def params(self) -> int:
        """All parameters: layers (with two norms each), final norm, embedding and LM head.

        Llama-3.1-8B (the default shape) has 8,030,261,248.

        >>> LLAMA31_8B.params()
        8030261248
        """
        per_layer = self.layer_matmul_weights() + 2 * self.hidden
        return self.layers * per_layer + self.hidden + 2 * self.vocab * self.hidden


#: Llama-3.1-8B: config.json of meta-llama/Llama-3.1-8B on Hugging Face
LLAMA31_8B = LlmShape(32, 4096, 32, 8, 128, 14336, 128256)


def llm_step(
    shape: LlmShape, batch: int, seq_len: int, phase: str, precision: str
) -> tuple[int, int]:
    """One forward step of the whole model; logits of one token per sequence.

    decode: ``batch`` new tokens, each attending to ``seq_len`` cached tokens (itself included);
    prefill: ``batch`` prompts of ``seq_len`` tokens, causal. Bytes: every weight once
    (the embedding only for the looked-up rows), the KV cache read (decode) or written (prefill),
    hidden states in and out, and the logits.

    >>> llm_step(LlmShape(1, 8, 2, 1, 4, 16, 10), 1, 4, "decode", "fp32")
    (1440, 2952)
    """
    s, e = shape, ELEMENT_BYTES[precision]
    tokens = batch if phase == "decode" else batch * seq_len
    kv_row = 2 * s.kv_heads * s.head_dim  # K and V of one token in one layer
    if phase == "decode":
        attn = 4 * batch * s.heads * seq_len * s.head_dim
        kv_bytes = batch * seq_len * kv_row
    else:
        attn = 2 * batch * s.heads * s.head_dim * seq_len * (seq_len + 1)
        kv_bytes = tokens * kv_row
    logits = 2 * batch * s.vocab * s.hidden
    flops = 2 * tokens * s.layers * s.layer_matmul_weights() + s.layers * attn + logits
    weights = s.layers * (s.layer_matmul_weights() + 2 * s.hidden) + s.hidden + s.vocab * s.hidden
    traffic = weights + s.layers * kv_bytes + 2 * tokens * s.hidden + batch * s.vocab
    return flops, traffic * e


def allreduce(message_bytes: int, ranks: int) -> tuple[int, int]:
    """nccl-tests conventions: ``bytes`` is the bus traffic per rank, ``2(n-1)/n · S``, so that
    ``bytes / time`` is the bus bandwidth (busbw); algbw = ``message_bytes / time``. The
    reduction's additions are not counted (flops 0).

    >>> allreduce(1 << 20, 8)
    (0, 1835008)
    """
    return 0, 2 * (ranks - 1) * message_bytes // ranks
