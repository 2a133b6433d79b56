"""Work done by one call of each kernel: FLOPs and the minimum bytes moved (for a roofline).

Conventions (also in README.md):
- a multiply-add counts as 2 FLOPs; softmax, normalisation and activations are not counted;
- bytes are the compulsory traffic: every input read once and every output written once;
- causal attention counts only the lower triangle (the work a flash kernel does).
"""

from __future__ import annotations

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
