"""``capsim model import model.onnx``: a layered fixed-shape card from an ONNX graph.

Shapes come from ONNX shape inference (``onnx.shape_inference.infer_shapes``); layers from the
graph's operators, one per node, then fused as an optimising engine (TensorRT) would: a
BatchNormalization or a unary activation (Relu, Clip, Sigmoid, ...) that alone consumes a Conv /
Gemm / MatMul output is folded into it, and so is an Add of that output and another tensor (the
residual add). Operators that only reshape (Reshape, Transpose, Flatten, Squeeze, Shape,
Constant...) cost nothing; any operator the importer does not know is listed in the card's
sources as not modelled, never silently dropped.

The first dimension of every graph input is the batch; costs are per sample. Other symbolic
dimensions need a value (``--dim name=value``).

onnx is an optional extra (``pip install 'capsim[onnx]'``); it is imported only here.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from capsim.errors import InputError

UNARY = {
    "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Gelu", "Erf", "Softplus", "Mish", "PRelu",
}  # fmt: skip
ELEMENTWISE = UNARY | {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Softmax", "Neg", "Abs", "Max",
    "Min", "Where", "Cast", "Concat", "Split", "Slice", "Pad", "Resize", "Expand", "Tile",
    "ReduceMean", "ReduceSum", "ReduceMax", "Upsample", "QuantizeLinear", "DequantizeLinear",
}  # fmt: skip
FREE = {
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant",
    "ConstantOfShape", "Dropout", "Range", "Size",
}  # fmt: skip
FLOPS_PER_ELEMENT = {"Softmax": 5.0, "Gelu": 8.0, "Erf": 8.0, "Sigmoid": 4.0, "Tanh": 4.0}
NORMS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
FUSE_INTO = {"Conv", "Gemm", "MatMul"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise InputError(
            "capsim model import needs the onnx package: pip install 'capsim[onnx]' (or onnx)"
        ) from None
    return onnx


def _set_dims(model, dims: dict[str, int]) -> None:
    """Give every symbolic input dimension a value: the first (batch) 1, others from ``dims``."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            sym = d.dim_param
            if i == 0:
                d.dim_value = 1
            elif sym in dims:
                d.dim_value = dims[sym]
            else:
                raise InputError(
                    f"input '{inp.name}' dimension {i} is symbolic ('{sym or '?'}'); give its "
                    f"value as {sym or 'NAME'}=VALUE",
                    param="dims",
                )


def _shapes(model) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
        ]
        out[vi.name] = dims
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _per_sample(shape: list[int], batch: int) -> int:
    if not shape or any(d < 0 for d in shape):
        return -1
    return max(1, math.prod(shape) // batch)


class _Builder:
    """Walks the inferred graph and emits layer mappings (see the module docstring)."""

    def __init__(self, model, batch: int):
        self.g = model.graph
        self.shapes = _shapes(model)
        self.inits = {i.name: list(i.dims) for i in self.g.initializer}
        self.batch = batch
        self.layers: list[dict[str, Any]] = []
        self.producer: dict[str, int] = {}  # tensor -> index of the layer that writes it
        self.consumers = Counter(i for n in self.g.node for i in n.input if i)
        self.unmodelled: Counter[str] = Counter()
        self.free: Counter[str] = Counter()

    def shape(self, name: str, node) -> list[int]:
        s = self.shapes.get(name)
        if s is None or any(d < 0 for d in s):
            raise InputError(
                f"node '{node.name or node.op_type}' ({node.op_type}): shape inference gave no "
                f"static shape for '{name}'; give symbolic dimensions with --dim"
            )
        return s

    def acts(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.inits]

    def emit(self, node, layer: dict[str, Any]) -> None:
        layer = {"name": node.name or f"{node.op_type.lower()}_{len(self.layers)}", **layer}
        self.layers.append(layer)
        for o in node.output:
            self.producer[o] = len(self.layers) - 1

    def fuse(self, node) -> bool:
        """Fold ``node`` into the layer that produced its (sole-consumer) input, if it can."""
        src = [i for i in self.acts(node) if i in self.producer]
        if not src:
            return False
        idx = self.producer[src[0]]
        target = self.layers[idx]
        if target["kind"] not in ("conv", "matmul") or self.consumers[src[0]] != 1:
            return False
        if node.op_type == "Add":
            if len(self.acts(node)) != 2 or target.get("residual"):
                return False
            target["residual"] = True
        elif node.op_type == "BatchNormalization":
            target["extra_params"] = (
                target.get("extra_params", 0) + 2 * self.inits.get(node.input[1], [0])[0]
            )
        elif node.op_type not in UNARY:
            return False
        for o in node.output:
            self.producer[o] = idx
        return True

    def node(self, node) -> None:
        op = node.op_type
        if op in FREE:
            self.free[op] += 1
            for o in node.output:  # a reshape passes its producer through
                src = [i for i in node.input[:1] if i in self.producer]
                if src:
                    self.producer[o] = self.producer[src[0]]
            return
        if op in ("BatchNormalization", "Add", *UNARY) and self.fuse(node):
            return
        handler = getattr(self, f"_{op}", None)
        if handler is not None:
            handler(node)
        elif op in ELEMENTWISE:
            self._elementwise(node)
        elif op in NORMS:
            self._norm(node)
        elif op in POOLS:
            self._pool(node)
        else:
            self.unmodelled[op] += 1

    # -- operators ---------------------------------------------------------------------------

    def _Conv(self, node) -> None:
        x, w = self.shape(node.input[0], node), self.shape(node.input[1], node)
        y = self.shape(node.output[0], node)
        if len(x) != 4:
            raise InputError(f"Conv '{node.name}': only 2-D convolutions (NCHW) are modelled")
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        self.emit(node, {
            "kind": "conv", "input": x[1:], "output": y[1:], "kernel": w[2:], "groups": groups,
            "bias": len(node.input) > 2 and bool(node.input[2]),
        })  # fmt: skip

    def _Gemm(self, node) -> None:
        a, b = self.shape(node.input[0], node), self.shape(node.input[1], node)
        attrs = {x.name: x.i for x in node.attribute}
        k = a[0] if attrs.get("transA") else a[1]
        n = b[0] if attrs.get("transB") else b[1]
        m = max(1, (a[1] if attrs.get("transA") else a[0]) // self.batch)
        bias = len(node.input) > 2 and bool(node.input[2])
        weights = node.input[1] in self.inits
        self.emit(
            node, {"kind": "matmul", "m": m, "n": n, "k": k, "bias": bias, "weights": weights}
        )

    def _MatMul(self, node) -> None:
        a, b = self.shape(node.input[0], node), self.shape(node.input[1], node)
        m, k, n = a[-2] if len(a) > 1 else 1, a[-1], b[-1]
        if node.input[1] in self.inits:  # activations x weights: all leading dims are rows
            rows = max(1, math.prod(a[:-1]) // self.batch)
            self.emit(node, {"kind": "matmul", "m": rows, "n": n, "k": k, "bias": False})
        else:  # activations x activations (attention scores): one GEMM per leading index
            lead = max(1, math.prod(a[:-2]) // self.batch) if len(a) > 2 else 1
            self.emit(node, {"kind": "matmul", "m": m, "n": n, "k": k, "bias": False,
                             "weights": False, "batch": lead})  # fmt: skip

    def _Gather(self, node) -> None:
        if node.input[0] not in self.inits:  # a gather on activations moves its output
            self._elementwise(node)
            return
        table, idx = self.inits[node.input[0]], self.shape(node.input[1], node)
        rows = max(1, _per_sample(idx, self.batch)) if idx else 1
        self.emit(node, {"kind": "embedding", "rows": rows, "dim": math.prod(table[1:]),
                         "vocab": [table[0]]})  # fmt: skip

    def _elementwise(self, node) -> None:
        out = self.shape(node.output[0], node)
        self.emit(node, {
            "kind": "elementwise", "rows": 1, "cols": _per_sample(out, self.batch),
            "inputs": max(1, len(self.acts(node))),
            "flops_per_element": FLOPS_PER_ELEMENT.get(node.op_type, 1.0),
            "extra_params": sum(math.prod(self.inits[i]) for i in node.input if i in self.inits),
        })  # fmt: skip

    def _norm(self, node) -> None:
        out = self.shape(node.output[0], node)
        params = sum(math.prod(self.inits[i]) for i in node.input[1:] if i in self.inits)
        self.emit(node, {
            "kind": "norm", "rows": 1, "cols": _per_sample(out, self.batch), "inputs": 1,
            "flops_per_element": 8.0, "extra_params": params,
        })  # fmt: skip

    def _pool(self, node) -> None:
        x, y = self.shape(node.input[0], node), self.shape(node.output[0], node)
        ks = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), x[2:])
        self.emit(node, {"kind": "pool", "input": x[1:], "output": y[1:], "window": math.prod(ks)})


def import_onnx(
    path: str | Path, *, name: str | None = None, dims: dict[str, int] | None = None
) -> dict[str, Any]:
    """A fixed-shape card mapping (with layers) from an ONNX file."""
    onnx = _onnx()
    p = Path(path)
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for bad files
        raise InputError(f"not a readable ONNX model: {exc}", file=p) from None
    _set_dims(model, dims or {})
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"ONNX shape inference failed: {exc}", file=p) from None
    builder = _Builder(model, batch=1)
    for node in model.graph.node:
        builder.node(node)
    if not builder.layers:
        raise InputError("the graph has no operator capsim can cost", file=p)
    init_params = sum(math.prod(i.dims) for i in model.graph.initializer)
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    shapes = builder.shapes
    unmodelled = ", ".join(f"{op} x{n}" for op, n in sorted(builder.unmodelled.items()))
    return {
        "kind": "fixed",
        "name": name or p.stem,
        "task": f"imported from {p.name}",
        "input": "; ".join(f"{i.name} {'x'.join(map(str, shapes[i.name][1:]))}" for i in ins),
        "output": "; ".join(
            f"{o.name} {'x'.join(map(str, shapes.get(o.name, [])[1:]))}" for o in model.graph.output
        ),
        "sources": {
            "params": f"sum over the layers imported from {p.name} (the graph's initializers "
            f"hold {init_params:,} values)",
            "flops_per_sample": f"ONNX shape inference on {p.name}; per-layer FLOPs from shapes",
            "activation_elements_per_sample": "per-layer inputs + outputs from the inferred "
            "shapes, BatchNormalization / activations / residual adds fused into the producing "
            "Conv or GEMM",
            "not_modelled": unmodelled or "none",
            "shape_only_ops": ", ".join(f"{op} x{n}" for op, n in sorted(builder.free.items()))
            or "none",
        },
        "layers": builder.layers,
    }
