"""Tasks of the model-level kinds: ``conv2d``, ``forward_llm_step`` and ``allreduce``.

Tiers as in :mod:`calibrate.plan`: tier 1 holds the coarse grid in the primary precision,
tier 2 the full grid, tier 3 the other precisions (measured last, cut first by the budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import work
from .task import Task, new_task

if TYPE_CHECKING:
    from .plan import SweepConfig

#: precisions a convolution runs in (torch has no fp8 or int8 conv2d on CUDA)
CONV_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
#: cuDNN's workspace and format conversions, as a multiple of the compulsory traffic (generous)
CONV_MEMORY_FACTOR = 3


def _conv_tier(prec: str, primary: str, coarse: bool) -> int:
    if prec == primary:
        return 1 if coarse else 2
    if prec in ("fp16", "bf16"):
        return 2 if coarse else 3
    return 3


def conv_tasks(cfg: SweepConfig, precisions: Sequence[str], primary: str) -> list[Task]:
    """Every conv shape x batch in every conv precision (fp32/tf32 on the coarse batches only),
    and the other layout in the primary precision on the coarse batches (tier 3)."""
    tasks = []
    for prec in [p for p in precisions if p in CONV_PRECISIONS]:
        for shape in cfg.conv_shapes:
            for batch in cfg.conv_batches:
                coarse = batch in cfg.conv_coarse_batches
                if prec in ("fp32", "tf32") and prec != primary and not coarse:
                    continue
                tier = _conv_tier(prec, primary, coarse)
                tasks.append(_conv_task(cfg.conv_layout, prec, shape, batch, tier))
                if cfg.conv_alt_layout and prec == primary and coarse:
                    tasks.append(_conv_task(cfg.conv_alt_layout, prec, shape, batch, 3))
    return tasks


def _conv_task(layout: str, prec: str, shape: tuple[int, ...], batch: int, tier: int) -> Task:
    cin, cout, hw, kernel, stride, groups = shape
    fb = work.conv2d(batch, cin, cout, hw, hw, kernel, stride, groups, prec)
    params = dict(
        batch=batch,
        in_channels=cin,
        out_channels=cout,
        height=hw,
        width=hw,
        kernel=kernel,
        stride=stride,
        groups=groups,
    )
    args = (batch, cin, cout, hw, kernel, stride, groups, layout, prec)
    build = lambda be: be.make_conv2d(*args)  # noqa: E731
    task = new_task("conv2d", prec, params, tier, fb, CONV_MEMORY_FACTOR * fb[1], build)
    task.text = {"layout": layout}
    return task


def llm_memory(shape: work.LlmShape, batch: int, seq_len: int, phase: str, e: int) -> int:
    """Bytes a step needs: weights, the KV cache, activations of the widest layer, logits."""
    tokens = batch if phase == "decode" else batch * seq_len
    kv = shape.layers * batch * seq_len * 2 * shape.kv_heads * shape.head_dim * e
    act = tokens * (3 * shape.ffn + 4 * shape.hidden + 2 * shape.heads * shape.head_dim) * e
    return shape.params() * e + kv + 2 * act + batch * shape.vocab * 4


def _llm_task(
    cfg: SweepConfig, prec: str, batch: int, seq: int, phase: str, tier: int, graph: bool
) -> Task:
    shape, e = cfg.llm, work.ELEMENT_BYTES[prec]
    fb = work.llm_step(shape, batch, seq, phase, prec)
    tokens = batch if phase == "decode" else batch * seq
    params = dict(
        layers=shape.layers,
        hidden=shape.hidden,
        heads=shape.heads,
        kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        ffn=shape.ffn,
        vocab=shape.vocab,
        batch=batch,
        seq_len=seq,
        tokens=tokens,
    )

    def build(be, b=batch, s=seq):  # noqa: ANN001, ANN202 - a plan closure
        return be.make_llm_step(shape, b, s, phase, prec, graph)

    mem = llm_memory(shape, batch, seq, phase, e)
    task = new_task("forward_llm_step", prec, params, tier, fb, mem, build)
    task.text = {"phase": phase}
    task.variant = ("cuda graph" if graph else "eager") if phase == "decode" else ""
    task.setup_bytes = mem - shape.params() * e  # the weights stay from the previous point
    return task


def llm_tasks(cfg: SweepConfig, prec: str) -> list[Task]:
    """Decode steps (CUDA graph and eager where graphs exist) and prefills of the whole model."""
    tasks = []
    graphs = (True, False) if cfg.llm_graphs else (False,)
    for bi, batch in enumerate(cfg.llm_decode_batches):
        for li, seq in enumerate(cfg.llm_decode_lens):
            for graph in graphs:
                coarse = bi in (0, 2) and li < 2
                tier = 1 if coarse and graph == cfg.llm_graphs else 2
                tasks.append(_llm_task(cfg, prec, batch, seq, "decode", tier, graph))
    for i, (batch, seq) in enumerate(cfg.llm_prefill):
        tier = 1 if i < 2 else 2
        tasks.append(_llm_task(cfg, prec, batch, seq, "prefill", tier, False))
    return tasks


def allreduce_tasks(cfg: SweepConfig) -> list[Task]:
    """One all-reduce point per message size (the backend measures them in one process group)."""
    tasks = []
    for size in cfg.allreduce_sizes:
        fb = work.allreduce(size, 2)
        params = {"message_bytes": size, "ranks": 2}

        def build(be, s=size):  # noqa: ANN001, ANN202 - a plan closure
            return be.make_allreduce(s, cfg.allreduce_sizes)

        tasks.append(new_task("allreduce", "fp32", params, 2, fb, 2 * size, build))
    return tasks
