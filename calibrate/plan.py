"""What to measure: the sweep for a device kind, as an ordered list of tasks.

Tasks carry a *tier*: tier 0 is the cheapest set that already gives a usable roofline (launch
overhead, one bandwidth size, a coarse GEMM sweep in the main precision, one point of each other
kernel); tier 1 widens it (other precisions and shapes, coarse grids); tier 2 fills in the rest.
Under a tight budget the runner measures tiers in order and skips what no longer fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import plan_models, work
from .schema import KINDS
from .task import Task, new_task
from .timing import TimingConfig
from .work import LLAMA31_8B, LlmShape

MB = 1 << 20

#: (in_channels, out_channels, input height = width, kernel, stride, groups) of the distinct
#: convolutions of ResNet-50 v1.5 (torchvision's resnet50: stride 2 in the 3x3 convolution of a
#: stage's first bottleneck; downsample 1x1 convolutions with stride 2), in network order, and
#: one depthwise 3x3 convolution of MobileNet-V2 (144 channels at 56x56, arXiv:1801.04381 Table 2)
RESNET50_CONVS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 64, 224, 7, 2, 1),
    (64, 64, 56, 1, 1, 1),
    (64, 64, 56, 3, 1, 1),
    (64, 256, 56, 1, 1, 1),
    (256, 64, 56, 1, 1, 1),
    (256, 128, 56, 1, 1, 1),
    (128, 128, 56, 3, 2, 1),
    (128, 512, 28, 1, 1, 1),
    (256, 512, 56, 1, 2, 1),
    (512, 128, 28, 1, 1, 1),
    (128, 128, 28, 3, 1, 1),
    (512, 256, 28, 1, 1, 1),
    (256, 256, 28, 3, 2, 1),
    (256, 1024, 14, 1, 1, 1),
    (512, 1024, 28, 1, 2, 1),
    (1024, 256, 14, 1, 1, 1),
    (256, 256, 14, 3, 1, 1),
    (1024, 512, 14, 1, 1, 1),
    (512, 512, 14, 3, 2, 1),
    (512, 2048, 7, 1, 1, 1),
    (1024, 2048, 14, 1, 2, 1),
    (2048, 512, 7, 1, 1, 1),
    (512, 512, 7, 3, 1, 1),
)
DEPTHWISE_CONV = (144, 144, 56, 3, 1, 144)
#: a tiny decoder for CPU runs and tests (GQA 4:2, like the default's 32:8)
TINY_LLM = LlmShape(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=512, vocab=1000)
#: all-reduce message sizes: 8 B .. 1 GiB in steps of 4x (nccl-tests sweeps -b 8 -e 1G)
ALLREDUCE_SIZES = tuple(8 * 4**i for i in range(14)) + (1 << 30,)


@dataclass(frozen=True)
class SweepConfig:
    """Sizes of every kernel family for one device kind and mode (full or ``--quick``)."""

    bandwidth_bytes: tuple[int, ...]
    gemm_shapes: tuple[tuple[int, int], ...]  # (n, k)
    gemm_m: tuple[int, ...]
    gemm_coarse_m: tuple[int, ...]
    attn_heads: int
    attn_head_dim: int
    decode_batches: tuple[int, ...]
    decode_lens: tuple[int, ...]
    prefill_lens: tuple[int, ...]
    block: tuple[int, int, int, int]  # hidden, heads, ffn, seq_len
    block_batches: tuple[int, ...]
    resnet_batches: tuple[int, ...]
    busy_gemm: int
    timing: TimingConfig
    warmup_s: float
    idle_s: float
    busy_s: float
    conv_shapes: tuple[tuple[int, int, int, int, int, int], ...] = ()
    conv_batches: tuple[int, ...] = ()
    conv_coarse_batches: tuple[int, ...] = ()
    conv_layout: str = "NCHW"
    conv_alt_layout: str | None = None  # also measured: primary precision, coarse batches
    llm: LlmShape = LLAMA31_8B
    llm_decode_batches: tuple[int, ...] = ()
    llm_decode_lens: tuple[int, ...] = ()
    llm_prefill: tuple[tuple[int, int], ...] = ()  # (batch, prompt length)
    llm_graphs: bool = False
    allreduce_sizes: tuple[int, ...] = ()


def _powers(limit: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(limit.bit_length()) if 2**i <= limit)


def _bandwidth_sizes(cache: int, floors: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    sizes = {
        min(max(floor, f * cache), 4096 * MB) for floor, f in zip(floors, factors, strict=True)
    }
    return tuple(sorted(s - s % MB for s in sizes))


def cpu_sweep(quick: bool, cache_bytes: int) -> SweepConfig:
    """CPU sizes: transformer shapes scaled down by 4 (4096 -> 1024, 11008 -> 2752)."""
    if quick:
        return SweepConfig(
            bandwidth_bytes=_bandwidth_sizes(cache_bytes, [64 * MB], [4]),
            gemm_shapes=((1024, 1024), (2752, 1024)),
            gemm_m=(1, 8, 64, 512),
            gemm_coarse_m=(1, 64, 512),
            attn_heads=8,
            attn_head_dim=64,
            decode_batches=(1, 8),
            decode_lens=(256, 2048),
            prefill_lens=(128, 512),
            block=(1024, 8, 2752, 64),
            block_batches=(1, 4),
            resnet_batches=(1,),
            busy_gemm=512,
            timing=TimingConfig(warmup=1, max_time_s=0.04, min_repeats=3, max_repeats=20),
            warmup_s=0.0,
            idle_s=1.0,
            busy_s=1.5,
            conv_shapes=(RESNET50_CONVS[1], RESNET50_CONVS[18], DEPTHWISE_CONV),
            conv_batches=(1,),
            conv_coarse_batches=(1,),
            llm=TINY_LLM,
            llm_decode_batches=(1, 4),
            llm_decode_lens=(64,),
            llm_prefill=((1, 64),),
            allreduce_sizes=(),  # across GPUs only (tests run the gloo path directly)
        )
    return SweepConfig(
        bandwidth_bytes=_bandwidth_sizes(cache_bytes, [64 * MB, 128 * MB, 256 * MB], [4, 8, 16]),
        gemm_shapes=((1024, 1024), (2752, 1024), (1024, 2752)),
        gemm_m=_powers(2048),
        gemm_coarse_m=(1, 16, 256, 2048),
        attn_heads=8,
        attn_head_dim=64,
        decode_batches=(1, 4, 16),
        decode_lens=(256, 1024, 4096),
        prefill_lens=(128, 512, 2048),
        block=(1024, 8, 2752, 64),
        block_batches=(1, 2, 4, 8),
        resnet_batches=(1, 4),
        busy_gemm=1024,
        timing=TimingConfig(warmup=2, max_time_s=0.3, min_repeats=5, max_repeats=100),
        warmup_s=0.0,
        idle_s=5.0,
        busy_s=10.0,
        conv_shapes=(*RESNET50_CONVS, DEPTHWISE_CONV),
        conv_batches=(1, 4),
        conv_coarse_batches=(1,),
        llm=TINY_LLM,
        llm_decode_batches=(1, 4, 16),
        llm_decode_lens=(64, 512),
        llm_prefill=((1, 64), (1, 256), (4, 64)),
        allreduce_sizes=(),
    )


def cuda_sweep(quick: bool, cache_bytes: int) -> SweepConfig:
    """GPU sizes: Llama-2-7B-like layers (hidden 4096, FFN 11008, 32 heads of 128)."""
    if quick:
        return SweepConfig(
            bandwidth_bytes=_bandwidth_sizes(cache_bytes, [256 * MB], [8]),
            gemm_shapes=((4096, 4096), (11008, 4096)),
            gemm_m=(1, 16, 256, 2048),
            gemm_coarse_m=(1, 256, 2048),
            attn_heads=32,
            attn_head_dim=128,
            decode_batches=(1, 16),
            decode_lens=(1024, 4096),
            prefill_lens=(512, 2048),
            block=(4096, 32, 11008, 512),
            block_batches=(1, 4),
            resnet_batches=(1, 32),
            busy_gemm=4096,
            timing=TimingConfig(warmup=3, max_time_s=0.05, min_repeats=5, max_repeats=50),
            warmup_s=0.5,
            idle_s=1.5,
            busy_s=3.0,
            conv_shapes=(RESNET50_CONVS[1], RESNET50_CONVS[18], DEPTHWISE_CONV),
            conv_batches=(1, 32),
            conv_coarse_batches=(1, 32),
            conv_layout="NHWC",
            llm_decode_batches=(1, 32),
            llm_decode_lens=(1024,),
            llm_prefill=((1, 512),),
            llm_graphs=True,
            allreduce_sizes=(8, 1 << 20, 1 << 26),
        )
    return SweepConfig(
        bandwidth_bytes=_bandwidth_sizes(cache_bytes, [256 * MB, 512 * MB, 1024 * MB], [8, 16, 32]),
        # Llama-2-7B's projections, then Llama-3.1-8B's: fused QKV (GQA), fused gate+up, down
        gemm_shapes=(
            (4096, 4096),
            (11008, 4096),
            (4096, 11008),
            (6144, 4096),
            (28672, 4096),
            (4096, 14336),
        ),
        gemm_m=_powers(4096),
        gemm_coarse_m=(1, 16, 256, 4096),
        attn_heads=32,
        attn_head_dim=128,
        decode_batches=(1, 8, 32, 64),
        decode_lens=(512, 2048, 8192),
        prefill_lens=(512, 2048, 8192),
        block=(4096, 32, 11008, 512),
        block_batches=(1, 2, 4, 8, 16),
        resnet_batches=(1, 8, 32, 128),
        busy_gemm=8192,
        timing=TimingConfig(warmup=5, max_time_s=0.3, min_repeats=10, max_repeats=500),
        warmup_s=2.0,
        idle_s=5.0,
        busy_s=10.0,
        conv_shapes=(*RESNET50_CONVS, DEPTHWISE_CONV),
        conv_batches=(1, 8, 32, 64, 128, 256),
        conv_coarse_batches=(1, 32, 256),
        conv_layout="NHWC",
        conv_alt_layout="NCHW",
        llm_decode_batches=(1, 8, 32, 64, 128, 256),
        llm_decode_lens=(512, 2048, 8192),
        llm_prefill=((1, 512), (1, 2048), (1, 8192), (4, 512), (4, 2048), (16, 512)),
        llm_graphs=True,
        allreduce_sizes=ALLREDUCE_SIZES,
    )


def sweep_config(device_kind: str, quick: bool, cache_bytes: int) -> SweepConfig:
    """The sweep for ``device_kind`` (``cpu`` or ``cuda``)."""
    make = cuda_sweep if device_kind == "cuda" else cpu_sweep
    return make(quick, cache_bytes)


def _gemm_tasks(cfg: SweepConfig, precisions: Sequence[str], primary: str) -> list[Task]:
    tasks = []
    for prec in precisions:
        for si, (n, k) in enumerate(cfg.gemm_shapes):
            for m in cfg.gemm_m:
                coarse = m in cfg.gemm_coarse_m
                tier = 0 if (prec == primary and si == 0 and coarse) else 2
                if tier == 2 and coarse and (si == 0 or prec == primary):
                    tier = 1
                fb = work.gemm(m, n, k, prec)
                build = lambda be, m=m, n=n, k=k, p=prec: be.make_gemm(m, n, k, p)  # noqa: E731
                tasks.append(
                    new_task("gemm", prec, {"m": m, "n": n, "k": k}, tier, fb, fb[1], build)
                )
    return tasks


def _bandwidth_tasks(cfg: SweepConfig) -> list[Task]:
    tasks = []
    for i, size in enumerate(cfg.bandwidth_bytes):
        params, tier = {"buffer_bytes": size}, min(i, 1)
        copy = lambda be, s=size: be.make_copy(s)  # noqa: E731
        read = lambda be, s=size: be.make_read(s)  # noqa: E731
        tasks.append(
            new_task("bandwidth_copy", "fp32", params, tier, work.copy(size), 2 * size, copy)
        )
        tasks.append(new_task("bandwidth_read", "fp32", params, tier, work.read(size), size, read))
    return tasks


def _attention_tasks(cfg: SweepConfig, prec: str, fused: bool) -> list[Task]:
    h, d = cfg.attn_heads, cfg.attn_head_dim
    tasks = []
    for bi, batch in enumerate(cfg.decode_batches):
        for li, seq in enumerate(cfg.decode_lens):
            tier = 0 if bi == li == 0 else (1 if bi < 2 and li < 2 else 2)
            fb = work.attention_decode(batch, seq, h, d, prec)
            params = {"batch": batch, "seq_len": seq, "heads": h, "head_dim": d}
            build = lambda be, b=batch, s=seq: be.make_attention_decode(b, s, h, d, prec)  # noqa: E731
            tasks.append(new_task("attention_decode", prec, params, tier, fb, 2 * fb[1], build))
    for li, seq in enumerate(cfg.prefill_lens):
        fb = work.attention_prefill(1, seq, h, d, prec)
        scores = 0 if fused else 3 * h * seq * seq * 4  # explicit kernels materialise scores
        params = {"batch": 1, "seq_len": seq, "heads": h, "head_dim": d}
        build = lambda be, s=seq: be.make_attention_prefill(1, s, h, d, prec)  # noqa: E731
        mem = 2 * fb[1] + scores
        tasks.append(new_task("attention_prefill", prec, params, min(li, 2), fb, mem, build))
    return tasks


def _block_tasks(cfg: SweepConfig, prec: str, fused: bool) -> list[Task]:
    hidden, heads, ffn, seq = cfg.block
    tasks = []
    for i, batch in enumerate(cfg.block_batches):
        fb = work.forward_block(batch, seq, hidden, heads, ffn, prec)
        tokens = batch * seq
        scores = 0 if fused else 3 * batch * heads * seq * seq * 4
        mem = fb[1] + 4 * tokens * (3 * hidden + 2 * ffn) * 4 + scores
        params = dict(
            batch=batch,
            seq_len=seq,
            heads=heads,
            head_dim=hidden // heads,
            hidden=hidden,
            ffn=ffn,
            tokens=tokens,
        )
        build = lambda be, b=batch: be.make_block(b, seq, hidden, heads, ffn, prec)  # noqa: E731
        tasks.append(new_task("forward_block", prec, params, min(i, 2), fb, mem, build))
    return tasks


def _resnet_tasks(cfg: SweepConfig, prec: str) -> list[Task]:
    tasks = []
    for i, batch in enumerate(cfg.resnet_batches):
        fb = work.resnet50(batch, prec)
        mem = fb[1] + batch * 32 * MB  # peak live activations of one image in fp32, generous
        build = lambda be, b=batch: be.make_resnet50(b, prec)  # noqa: E731
        tier = 1 + min(i, 1)
        tasks.append(new_task("forward_resnet50", prec, {"batch": batch}, tier, fb, mem, build))
    return tasks


def _launch_task() -> Task:
    f, b = work.launch()
    return Task("launch", "fp32", {}, 0, f, b, 0, lambda be: be.make_launch())


def build_plan(
    cfg: SweepConfig,
    gemm_precisions: Sequence[str],
    primary: str,
    *,
    resnet: bool,
    fused_attention: bool = False,
    models: bool = False,
) -> list[Task]:
    """All timed tasks of the sweep, ordered by (tier, kind); power rows are added by the runner.

    ``fused_attention``: the backend's attention does not materialise the score matrix (flash /
    memory-efficient SDPA), which lowers the memory a prefill point needs. ``models``: the
    backend runs conv2d, whole-model LLM steps and all-reduce (the torch backend).
    """
    tasks = [_launch_task(), *_bandwidth_tasks(cfg), *_gemm_tasks(cfg, gemm_precisions, primary)]
    tasks += _attention_tasks(cfg, primary, fused_attention)
    tasks += _block_tasks(cfg, primary, fused_attention)
    if resnet:
        tasks += _resnet_tasks(cfg, primary)
    if models:
        tasks += plan_models.conv_tasks(cfg, gemm_precisions, primary)
        tasks += plan_models.llm_tasks(cfg, primary)
        tasks += plan_models.allreduce_tasks(cfg)
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(tasks, key=lambda t: (t.tier, order[t.kind]))
