"""Layered fixed-shape cards (capsim.spec.model_layers, capsim.spec.model_zoo) and their per-layer times
(capsim.service.layers)."""

from __future__ import annotations

import json

import pytest

from capsim.cli import main
from capsim.errors import InputError
from capsim.load import load_catalog, load_model_card, load_scenario
from capsim.paths import shipped_models_dir
from capsim.service.fixed import FixedServiceModel
from capsim.service.layers import LayerTimer, _shape_efficiency
from capsim.spec.chip import Chip
from capsim.spec.model_layers import Conv, Matmul
from capsim.spec.model_zoo import CARDS
from capsim.spec.model_zoo import main as zoo_main
from capsim.spec.models import FixedModel, parse_model_card


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_shipped_cards_are_what_the_generator_writes():
    assert zoo_main(["--check", str(shipped_models_dir())]) == 0
    for name in CARDS:
        assert load_model_card(name).layers, name


def _macs(card) -> float:
    return sum(c.flops for c in card.layer_costs() if c.family != "elementwise") / 2


@pytest.mark.parametrize(
    ("name", "gmacs", "params"),
    [
        ("resnet-50", 4.09, 25_557_032),  # torchvision: GFLOPS (MACs) 4.09, 25,557,032 params
        ("mobilenet-v2", 0.30, 3_504_872),
        ("efficientnet-b0", 0.39, 5_288_548),
    ],
)
def test_cnn_layers_match_published_counts(name, gmacs, params):
    card = load_model_card(name)
    assert card.params == params
    assert _macs(card) == pytest.approx(gmacs * 1e9, rel=0.02)  # published to two digits


def test_encoder_layers_match_published_counts():
    # Devlin et al.: 110M / 340M; bge model cards: 335M / 33.4M (with the unused pooler)
    assert load_model_card("bert-base").params == pytest.approx(110e6, rel=0.01)
    assert load_model_card("bert-large").params == pytest.approx(335e6, rel=0.01)
    assert load_model_card("bge-small-en").params == pytest.approx(33.4e6, rel=0.01)
    bert = load_model_card("bert-base")
    assert bert.sequence_length == 384 and load_model_card("bge-large-en").sequence_length == 512
    # 2 FLOPs per matmul weight per token dominate: ~22.3 GFLOPs at 128 tokens
    assert bert.at_sequence_length(128).flops_per_sample == pytest.approx(22.35e9, rel=0.01)


def test_sequence_length_rescales_and_is_checked():
    bge = load_model_card("bge-large-en")
    half = bge.at_sequence_length(256)
    assert half.input == "256 tokens" and half.layers == bge.layers
    assert 2.0 < bge.flops_per_sample / half.flops_per_sample < 2.2  # attention grows as s^2
    with pytest.raises(ValueError, match="at most 512"):
        bge.at_sequence_length(1024)
    with pytest.raises(ValueError, match="no sequence length"):
        load_model_card("resnet-50").at_sequence_length(128)


def test_card_validation_of_layers():
    base = {"kind": "fixed", "name": "x", "input": "i", "output": "o"}
    src = {f: "test" for f in ("params", "flops_per_sample", "activation_elements_per_sample")}
    ok = parse_model_card(
        {**base, "sources": src, "layers": [{"name": "fc", "kind": "matmul", "m": 1, "n": 10, "k": 4}]},
        file="t.yaml",
    )  # fmt: skip
    assert ok.params == 50 and ok.flops_per_sample == 80 and ok.kernels_per_forward == 1
    bad_seq = {**base, "sources": src, "layers": [{"name": "q", "kind": "matmul", "m": "seq", "n": 2, "k": 2}]}  # fmt: skip
    with pytest.raises(InputError, match="sequence_length"):
        parse_model_card(bad_seq, file="t.yaml")
    wrong = {**base, "sources": src, "params": 99, "layers": ok.model_dump()["layers"]}
    with pytest.raises(InputError, match="disagrees with its layers"):
        parse_model_card(wrong, file="t.yaml")
    with pytest.raises(InputError, match="kind"):
        parse_model_card(
            {**base, "sources": src, "layers": [{"name": "z", "kind": "fft"}]}, file="t"
        )


def test_totals_only_cards_stay_valid_and_use_the_roofline(catalog):
    card = load_model_card("resnet-50")
    flat = FixedModel.model_validate(card.model_dump(exclude={"layers"}), strict=False)
    assert flat.layers is None and flat.flops_per_sample == card.flops_per_sample
    svc = FixedServiceModel(catalog["t4"], flat, "int8")
    assert svc.layers is None and svc.batch(8).source == "roofline"


def test_wave_quantisation():
    # a GEMM that fills every SM exactly once is fully efficient; one SM more needs a 2nd wave
    assert _shape_efficiency((128 * 108, 128, 64, 1), 1, 108) == 1.0
    tail = _shape_efficiency((256 * 109, 128, 64, 1), 1, 108)
    assert tail < 0.8
    assert _shape_efficiency((7, 64, 64, 1), 1, None) == 1.0  # no SM count: no quantisation


def _one_layer_card(layer) -> FixedModel:
    src = {f: "test" for f in ("params", "flops_per_sample", "activation_elements_per_sample")}
    return FixedModel(name="one", input="i", output="o", sources=src, layers=(layer,))


def test_l2_residency_speeds_up_memory_bound_layers(catalog):
    # a 1x1 conv with few channels is memory-bound; on the L4 its activations fit the 48 MB L2
    layer = Conv(name="c", input=(64, 56, 56), output=(256, 56, 56), kernel=(1, 1))
    card = _one_layer_card(layer)
    l4 = catalog["l4"]
    no_l2 = l4.model_copy(update={"chip": l4.chip.model_copy(update={"l2_mib": None})})
    with_l2 = LayerTimer(l4, card, "int8").batch(8)[0]
    without = LayerTimer(no_l2, card, "int8").batch(8)[0]
    assert with_l2.l2_hit == 1.0 and without.l2_hit == 0.0
    assert with_l2.memory_s < 0.5 * without.memory_s
    # a batch too large for the L2 goes mostly to DRAM
    assert LayerTimer(l4, card, "int8").batch(256)[0].l2_hit < 0.2


def test_power_limited_clock_on_t4(catalog):
    t4 = catalog["t4"]
    big = _one_layer_card(Matmul(name="g", m=4096, n=4096, k=4096))
    t = LayerTimer(t4, big, "int8").batch(1)[0]
    assert t.bound == "compute"
    assert t.clock_ratio == pytest.approx(900 / 1590, rel=0.01)
    # a memory-bound layer keeps tensor cores mostly idle: at (or near) boost
    gemv = LayerTimer(t4, _one_layer_card(Matmul(name="v", m=1, n=4096, k=4096)), "int8")
    assert gemv.batch(1)[0].clock_ratio == 1.0
    assert Chip(boost_clock_mhz=1000, sustained_clock_mhz=500).clock_ratio(0.125) == 1.0


def test_resnet50_int8_orders_l4_above_t4(catalog):
    """The issue's headline ordering error (capsim had the L4 below the T4)."""

    def best(gpu_id):
        svc = FixedServiceModel(catalog[gpu_id], load_model_card("resnet-50"), "int8")
        return max(svc.batch(b).throughput for b in (1, 8, 32, 64, 128, 256))

    assert best("l4") > 2.0 * best("t4")
    assert best("h100-sxm") > best("a100-80gb-sxm") > best("l4")


def test_estimate_reports_layers_and_seq_len(runner):
    args = [
        "estimate",
        "--gpu",
        "l4",
        "--model",
        "bert-base",
        "--precision",
        "int8",
        "--batch",
        "8",
    ]
    res = runner.invoke(main, [*args, "--seq-len", "128", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    kinds = {r["kind"]: r for r in out["layers"]}
    assert {"matmul", "attention", "norm", "embedding"} <= set(kinds)
    assert kinds["matmul"]["source"] == "model"
    assert "catalog efficiency" in kinds["matmul"]["efficiency_source"]
    assert any("sequence length 128" in n for n in out["notes"])
    res = runner.invoke(main, ["estimate", "--gpu", "t4", "--model", "resnet-50", "--precision", "int8", "--seq-len", "64"])  # fmt: skip
    assert res.exit_code == 2 and "--seq-len" in res.output
    res = runner.invoke(main, [*args, "--seq-len", "4096"])
    assert res.exit_code == 2 and "at most 512" in res.output


def test_scenario_sequence_length(tmp_path):
    scenario = load_scenario("scenarios/embedding.yaml")  # sequence_length: 256
    assert scenario.fixed_model.input == "256 tokens"
    assert scenario.fixed_model.sequence_length == 256
    text = (shipped_models_dir().parent / "embedding.yaml").read_text()
    bad = tmp_path / "s.yaml"
    bad.write_text(text.replace("sequence_length: 256", "sequence_length: 4096"))
    with pytest.raises(InputError, match="at most 512") as err:
        load_scenario(bad)
    assert err.value.where == "sequence_length"
