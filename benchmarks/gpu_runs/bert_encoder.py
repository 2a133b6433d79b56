"""Time a whole BERT-Large encoder forward on one GPU (capsim issue 10, the encoder half).

The model is built from the operators of capsim's layered ``bert-large`` card (24 layers,
hidden 1024, 16 heads of 64, FFN 4096; random weights): token + position + type embeddings
and LayerNorm, then per layer a fused QKV GEMM, scaled-dot-product attention (PyTorch SDPA:
FlashAttention / memory-efficient kernels), the output GEMM, add + LayerNorm, the FFN up GEMM,
GELU, the down GEMM, add + LayerNorm; the pooler. Every sequence is padded to ``seq`` tokens,
as capsim's card costs it. Each (precision, batch, seq) point is captured in a CUDA graph (an
optimised engine has no per-kernel host launch cost) and replayed; the median of the replays
is recorded.

Run from the repository root on the GPU box (needs torch with CUDA):

    python3 benchmarks/gpu_runs/bert_encoder.py --out DIR [--budget-seconds 150]

Writes ``DIR/bert_encoder.csv`` and ``DIR/meta.json``. Compare with
``capsim estimate --gpu h200-sxm --model bert-large --precision fp16 --batch 1 8 32 --seq-len 384``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

LAYERS, HIDDEN, HEADS, FFN, VOCAB, POSITIONS = 24, 1024, 16, 4096, 30522, 512
BATCHES = (1, 8, 32, 64, 128, 256)
SEQS = (384, 128)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_model(dtype: torch.dtype, device: str) -> dict:
    """Random weights in the card's shapes (the values do not change the time)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(device=device, dtype=dtype)

    layers = [
        {
            "qkv": w(3 * HIDDEN, HIDDEN),
            "qkv_b": w(3 * HIDDEN),
            "out": w(HIDDEN, HIDDEN),
            "out_b": w(HIDDEN),
            "ln1": (w(HIDDEN) + 1, w(HIDDEN)),
            "up": w(FFN, HIDDEN),
            "up_b": w(FFN),
            "down": w(HIDDEN, FFN),
            "down_b": w(HIDDEN),
            "ln2": (w(HIDDEN) + 1, w(HIDDEN)),
        }  # fmt: skip
        for _ in range(LAYERS)
    ]
    return {
        "tok": w(VOCAB, HIDDEN), "pos": w(POSITIONS, HIDDEN), "typ": w(2, HIDDEN),
        "ln0": (w(HIDDEN) + 1, w(HIDDEN)), "layers": layers,
        "pool": w(HIDDEN, HIDDEN), "pool_b": w(HIDDEN),
    }  # fmt: skip


def forward(m: dict, ids: torch.Tensor) -> torch.Tensor:
    """BERT encoder forward of token ids ``[batch, seq]`` (all positions real: no padding mask)."""
    b, s = ids.shape
    x = m["tok"][ids] + m["pos"][:s] + m["typ"][0]
    x = F.layer_norm(x, (HIDDEN,), *m["ln0"])
    for lyr in m["layers"]:
        qkv = F.linear(x, lyr["qkv"], lyr["qkv_b"]).view(b, s, 3, HEADS, HIDDEN // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, HIDDEN)
        x = F.layer_norm(x + F.linear(a, lyr["out"], lyr["out_b"]), (HIDDEN,), *lyr["ln1"])
        h = F.gelu(F.linear(x, lyr["up"], lyr["up_b"]))
        x = F.layer_norm(x + F.linear(h, lyr["down"], lyr["down_b"]), (HIDDEN,), *lyr["ln2"])
    return torch.tanh(F.linear(x[:, 0], m["pool"], m["pool_b"]))


def time_point(m: dict, batch: int, seq: int, device: str, min_s: float = 0.3) -> list[float]:
    """Replay times (s) of one CUDA-graph-captured forward."""
    ids = torch.randint(0, VOCAB, (batch, seq), device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up: kernel selection, allocator
            forward(m, ids)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        forward(m, ids)
    graph.replay()
    torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_s and len(times) < 200):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        graph.replay()
        t1.record()
        t1.synchronize()
        times.append(t0.elapsed_time(t1) / 1e3)
    del graph
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-seconds", type=float, default=150.0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    meta = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": "bert-large encoder (capsim card shapes), random weights, CUDA graph replay",
        "skipped": [],
    }
    rows = []
    t_start = time.monotonic()
    for prec, dtype in DTYPES.items():
        m = make_model(dtype, args.device)
        for seq in SEQS:
            for batch in BATCHES:
                if time.monotonic() - t_start > args.budget_seconds:
                    meta["skipped"].append(f"{prec} b{batch} s{seq}: over the budget")
                    continue
                ts = time_point(m, batch, seq, args.device)
                med = statistics.median(ts)
                rows.append({
                    "model": "bert-large", "precision": prec, "batch_size": batch,
                    "seq_len": seq, "median_s": f"{med:.6g}",
                    "p10_s": f"{sorted(ts)[len(ts) // 10]:.6g}",
                    "p90_s": f"{sorted(ts)[(9 * len(ts)) // 10]:.6g}",
                    "replays": len(ts), "samples_per_s": f"{batch / med:.6g}",
                })  # fmt: skip
                print(f"{prec} b{batch:>3} s{seq}: {med * 1e3:8.3f} ms  {batch / med:10.1f}/s",
                      flush=True)  # fmt: skip
        del m
        torch.cuda.empty_cache()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(args.out / "bert_encoder.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
