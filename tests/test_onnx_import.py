"""``capsim model import``: cards from small ONNX graphs built here with onnx.helper."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.cli import main
from capsim.errors import load_yaml
from capsim.spec.models import parse_model_card

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _init(name, *shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _resnet_block(path):
    """conv3x3 + BN + ReLU, conv3x3 + BN, + identity, ReLU, global pool, flatten, fc."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        n("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn1"], name="bn1"),
        n("Relu", ["bn1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        n("BatchNormalization", ["c2", "g", "b", "m", "v"], ["bn2"], name="bn2"),
        n("Add", ["bn2", "x"], ["s"], name="add"),
        n("Relu", ["s"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    inits = [_init("w1", 16, 16, 3, 3), _init("w2", 16, 16, 3, 3), _init("fc_w", 10, 16),
             _init("fc_b", 10)] + [_init(k, 16) for k in "gbmv"]  # fmt: skip
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return _save(graph, path)


def test_import_conv_block_fuses_and_counts(runner, tmp_path):
    src = _resnet_block(tmp_path / "block.onnx")
    out = tmp_path / "block.yaml"
    res = runner.invoke(main, ["model", "import", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    card = parse_model_card(load_yaml(out), file=out)
    assert [layer.kind for layer in card.layers] == ["conv", "conv", "pool", "matmul"]
    conv1, conv2 = card.layers[0], card.layers[1]
    assert conv1.extra_params == 32 and not conv1.residual  # BN folded, ReLU fused
    assert conv2.residual  # the skip connection's add
    macs = 2 * (64 * 16 * 16 * 9) + 16 * 10
    assert card.flops_per_sample == 2 * macs + 16 * 64  # + the pooling adds
    assert card.params == 2 * (16 * 16 * 9 + 32) + 10 * 16 + 10
    assert card.sources["not_modelled"] == "none"
    res = runner.invoke(
        main, ["estimate", "--gpu", "t4", "--model", "block", "--precision", "int8"]
    )
    assert res.exit_code == 2  # not a shipped card: import writes a file the user places


def _encoder_matmuls(path, op="Relu"):
    """x[N, S, 32] @ W[32, 64] -> op -> scores = h @ h^T (activation x activation)."""
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w"], ["h"], name="proj"),
        n(op, ["h"], ["a"], name="act"),
        n("Transpose", ["a"], ["at"], perm=[0, 2, 1], name="t"),
        n("MatMul", ["a", "at"], ["s"], name="scores"),
        n("Softmax", ["s"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "enc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", "S"])], [_init("w", 32, 64)],
    )  # fmt: skip
    return _save(graph, path)


def test_import_symbolic_dims_and_activation_matmuls(runner, tmp_path):
    src = _encoder_matmuls(tmp_path / "enc.onnx")
    res = runner.invoke(main, ["model", "import", str(src)])
    assert res.exit_code == 2 and "--dim S=VALUE" in res.output
    res = runner.invoke(main, ["model", "import", str(src), "--dim", "S=128"])
    assert res.exit_code == 0, res.output
    card = parse_model_card(load_yaml_text(res.stdout), file="stdout")
    proj, scores, softmax = card.layers
    assert (proj.m, proj.n, proj.k, proj.weights) == (128, 64, 32, True)
    assert (scores.m, scores.n, scores.k, scores.weights) == (128, 128, 64, False)
    assert softmax.cols == 128 * 128 and softmax.flops_per_element == 5.0
    assert card.params == 32 * 64
    assert "GFLOPs per sample" in res.stderr
    res = runner.invoke(main, ["model", "import", str(src), "--dim", "S=x"])
    assert res.exit_code == 2 and "--dim" in res.output


def load_yaml_text(text: str):
    import yaml

    return yaml.safe_load(text)


def test_unknown_ops_are_listed_not_dropped(runner, tmp_path):
    src = _encoder_matmuls(tmp_path / "enc.onnx", op="Relu")
    model = onnx.load(str(src))
    model.graph.node.insert(2, helper.make_node("Round", ["a"], ["a_r"], name="round"))
    onnx.save(model, str(src))
    res = runner.invoke(main, ["model", "import", str(src), "--dim", "S=16"])
    assert res.exit_code == 0, res.output
    assert load_yaml_text(res.stdout)["sources"]["not_modelled"] == "Round x1"


def test_bad_files(runner, tmp_path):
    res = runner.invoke(main, ["model", "import", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "file not found" in res.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    res = runner.invoke(main, ["model", "import", str(junk)])
    assert res.exit_code == 2 and "junk.onnx" in res.output
