"""The shipped data: hardware catalog entries and fixed-shape model cards.

Checks that every file validates, that the facts the catalog must never derive stay null, that
every number names its source, and that the arithmetic written in the model cards' comments is
what the cards actually say.
"""

from __future__ import annotations

import math

import pytest

from capsim.load import available_model_names, is_sidecar, load_catalog, load_model_card
from capsim.paths import shipped_catalog_dir, shipped_models_dir
from capsim.spec.catalog import GIB, SOURCED_FIELDS
from capsim.spec.models import FixedModel

REQUIRED_CARDS = {
    "t4",
    "l4",
    "a10g",
    "l40s",
    "a100-40gb-sxm",
    "a100-80gb-sxm",
    "a100-80gb-pcie",
    "h100-pcie",
    "h100-sxm",
    "h200-sxm",
    "b200",
    "mi300x",
}

# Precisions a card lacks in hardware (docs/reference/gpus.md, "—" in the spec table): null, never
# derived from another precision.
UNSUPPORTED = {
    "t4": ("tf32", "bf16", "fp8"),
    "a10g": ("fp8",),
    "l4": ("int4",),
    "l40s": ("int4",),
    "a100-40gb-sxm": ("fp8",),
    "a100-80gb-sxm": ("fp8",),
    "a100-80gb-pcie": ("fp8",),
    "h100-pcie": ("int4",),
    "h100-sxm": ("int4",),
    "h200-sxm": ("int4",),
    "b200": ("int4",),
    "mi300x": ("int4",),
}

# Dense peaks from the gpus.md spec table (TFLOP/s): a typo in a YAML file shows up here.
SPEC_FP16 = {
    "t4": 65,
    "a10g": 70,
    "l4": 121,
    "l40s": 362,
    "a100-40gb-sxm": 312,
    "a100-80gb-sxm": 312,
    "a100-80gb-pcie": 312,
    "h100-pcie": 756,
    "h100-sxm": 989,
    "h200-sxm": 989,
    "b200": 2250,
    "mi300x": 1307,
}

REQUIRED_MODELS = {"resnet-50", "bert-base", "bert-large", "bge-large-en"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


# --------------------------------------------------------------------------- catalog files


def test_every_shipped_catalog_file_validates_and_is_loaded(catalog):
    files = sorted(p.stem for p in shipped_catalog_dir().glob("*.yaml") if not is_sidecar(p))
    assert files == sorted(catalog)
    for gpu_id, path in catalog.files.items():
        assert catalog[gpu_id].id == gpu_id == path.stem


def test_required_cards_present(catalog):
    assert set(catalog) >= REQUIRED_CARDS


@pytest.mark.parametrize("gpu_id", sorted(UNSUPPORTED))
def test_unsupported_precisions_are_null_never_derived(catalog, gpu_id):
    gpu = catalog[gpu_id]
    for fmt in UNSUPPORTED[gpu_id]:
        assert gpu.peak_tflops.get(fmt) is None, f"{gpu_id} {fmt} must be null"
        assert gpu.peak_flops(fmt) is None
        assert fmt not in gpu.supported_formats()


def test_named_never_derived_rules(catalog):
    t4 = catalog["t4"]
    assert t4.peak_tflops["bf16"] is None
    assert t4.peak_tflops["fp8"] is None
    assert t4.peak_tflops["tf32"] is None
    for a100 in ("a100-40gb-sxm", "a100-80gb-sxm", "a100-80gb-pcie"):
        assert catalog[a100].peak_tflops["fp8"] is None
    for card in ("h100-pcie", "h100-sxm", "h200-sxm", "b200"):
        assert catalog[card].peak_tflops["int4"] is None


@pytest.mark.parametrize("gpu_id", sorted(SPEC_FP16))
def test_fp16_peak_matches_spec_table(catalog, gpu_id):
    assert catalog[gpu_id].peak_tflops["fp16"] == SPEC_FP16[gpu_id]


def test_every_peak_lists_all_formats_explicitly(catalog):
    formats = {"fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"}
    for gpu in catalog.values():
        assert set(gpu.peak_tflops) == formats, gpu.id


def test_every_sourced_field_has_a_non_empty_source(catalog):
    for gpu in catalog.values():
        for field in SOURCED_FIELDS:
            src = gpu.sources.get(field, "")
            assert src.strip(), f"{gpu.id}: no source for {field}"
            assert len(src.strip()) >= 20, f"{gpu.id}: source for {field} is not specific"


def test_usable_memory_below_nominal_and_plausible(catalog):
    for gpu in catalog.values():
        assert gpu.usable_memory_gib <= gpu.memory_gib, gpu.id
        assert gpu.usable_memory_gib >= 0.9 * gpu.memory_gib, gpu.id
        assert gpu.usable_memory_bytes == pytest.approx(gpu.usable_memory_gib * GIB)


def test_aws_reported_usable_memory():
    # docs/reference/gpus.md: AWS reports L4 and A10G as 22,888 MiB, L40S as 45,776 MiB.
    cat = load_catalog()
    assert cat["l4"].usable_memory_gib == pytest.approx(22888 / 1024, abs=0.01)
    assert cat["a10g"].usable_memory_gib == pytest.approx(22888 / 1024, abs=0.01)
    assert cat["l40s"].usable_memory_gib == pytest.approx(45776 / 1024, abs=0.01)


def test_power_is_ordered(catalog):
    for gpu in catalog.values():
        p = gpu.power
        assert 0 < p.idle_w <= p.warm_idle_w < p.max_w, gpu.id
        assert p.memory_bound_fraction == pytest.approx(0.55)


def test_splitwise_idle_figures(catalog):
    assert catalog["a100-80gb-sxm"].power.idle_w == 63
    assert catalog["h100-sxm"].power.idle_w == 75


def test_nvlink_is_half_the_bidirectional_figure(catalog):
    # gpus.md lists bidirectional NVLink bandwidth; the catalog stores per direction.
    bidirectional = {
        "a100-40gb-sxm": 600,
        "a100-80gb-sxm": 600,
        "h100-sxm": 900,
        "h200-sxm": 900,
        "b200": 1800,
    }
    for gpu_id, bidi in bidirectional.items():
        ic = catalog[gpu_id].interconnect
        assert ic.kind == "nvlink"
        assert ic.bandwidth_gb_s == bidi / 2


def test_pcie_generations(catalog):
    per_direction = {
        "t4": 16,
        "l4": 32,
        "a10g": 32,
        "l40s": 32,
        "a100-80gb-pcie": 32,
        "h100-pcie": 64,
    }
    for gpu_id, bw in per_direction.items():
        ic = catalog[gpu_id].interconnect
        assert ic.kind == "pcie"
        assert ic.bandwidth_gb_s == bw


def test_network_is_the_instance_nic_bandwidth_per_gpu(catalog):
    # (kind, Gb/s per instance, GPUs per instance) from the provider's instance-type page; the
    # catalog stores GB/s per GPU per direction: Gb/s / 8 / GPUs. A typo in a YAML file shows up here.
    instance = {
        "a100-40gb-sxm": ("ethernet", 400, 8),  # AWS p4d.24xlarge, EFA
        "a100-80gb-sxm": ("ethernet", 400, 8),  # AWS p4de.24xlarge, EFA
        "a100-80gb-pcie": ("ethernet", 80, 4),  # Azure NC96ads_A100_v4
        "a10g": ("ethernet", 100, 8),  # AWS g5.48xlarge
        "b200": ("ethernet", 3200, 8),  # AWS p6-b200.48xlarge, EFA
        "h100-sxm": ("ethernet", 1600, 8),  # Google Cloud A3 Mega, 8 x 200 Gb/s
        "h200-sxm": ("ethernet", 3200, 8),  # AWS p5en.48xlarge, EFA
        "l4": ("ethernet", 100, 8),  # AWS g6.48xlarge
        "l40s": ("ethernet", 400, 8),  # AWS g6e.48xlarge
        "mi300x": ("infiniband", 3200, 8),  # Azure ND MI300X v5, 8 x 400 Gb/s NDR
        "t4": ("ethernet", 100, 8),  # AWS g4dn.metal
    }
    for gpu_id, (kind, gbit, gpus) in instance.items():
        net = catalog[gpu_id].interconnect.network
        assert net is not None, gpu_id
        assert net.kind == kind, gpu_id
        assert net.bandwidth_gb_s == pytest.approx(gbit / 8 / gpus), gpu_id
        assert net.hop_latency_us == pytest.approx(2.7), gpu_id  # NCCL's NET Ring/LL hwLat
    # no public instance with the H100 PCIe publishes a network figure: single node only
    assert catalog["h100-pcie"].interconnect.network is None
    # h100-sxm's fitted network is unchanged
    net = catalog["h100-sxm"].interconnect.network
    assert (net.latency_us, net.efficiency) == (130.6, 0.602)


def test_efficiency_defaults(catalog):
    published = {
        "a100-40gb-sxm": 0.869,
        "a100-80gb-sxm": 0.869,
        "a100-80gb-pcie": 0.811,
        "h100-sxm": 0.803,
        "b200": 0.776,
        "mi300x": 0.514,
        "l40s": 0.744,  # torch.matmul BF16, zzc0721/torch-performance-test-data
        "l4": 0.586,
    }
    for gpu in catalog.values():
        assert gpu.efficiency.memory == pytest.approx(0.8), gpu.id
        if gpu.id in published:
            assert gpu.efficiency.compute == pytest.approx(published[gpu.id])
    for gpu_id in ("t4", "a10g", "h100-pcie"):
        assert catalog[gpu_id].efficiency.compute == pytest.approx(0.7)


def test_default_price_is_aws_where_aws_has_the_card(catalog):
    aws = {
        "t4": 0.526,
        "a10g": 1.006,
        "l4": 0.805,
        "l40s": 1.861,
        "a100-40gb-sxm": 2.74,
        "a100-80gb-sxm": 3.43,
        "h100-sxm": 6.88,
        "h200-sxm": 7.91,
        "b200": 14.24,
    }
    for gpu_id, usd in aws.items():
        price = catalog[gpu_id].price
        assert price.provider == "aws"
        assert price.usd_per_hour == usd
    for gpu_id in REQUIRED_CARDS - set(aws):
        assert catalog[gpu_id].price.provider != "aws"
    for gpu in catalog.values():
        providers = [gpu.price.provider] + [a.provider for a in gpu.price.alternatives]
        assert len(providers) == len(set(providers)), gpu.id


def test_a10g_flagged_low_confidence(catalog):
    assert "low confidence" in (catalog["a10g"].notes or "").lower()


# --------------------------------------------------------------------------- model cards


def test_every_model_card_loads_and_has_sources():
    names = available_model_names()
    assert set(names) >= REQUIRED_MODELS
    files = {p.stem for p in shipped_models_dir().glob("*.yaml")}
    assert files == set(names)
    for name in names:
        card = load_model_card(name)
        assert card.name == name
        assert card.sources, f"{name} has no sources"
        assert all(str(v).strip() for v in card.sources.values()), name


def test_fixed_cards_source_every_number():
    for name in available_model_names():
        card = load_model_card(name)
        if not isinstance(card, FixedModel):
            continue
        for field in (
            "params",
            "flops_per_sample",
            "activation_elements_per_sample",
            "peak_activation_elements_per_sample",
            "kernels_per_forward",
        ):
            assert card.sources.get(field, "").strip(), f"{name}: no source for {field}"
        assert card.peak_activation_elements_per_sample < card.activation_elements_per_sample


def _bert_params(layers: int, d: int, ffn: int, vocab: int = 30522, pos: int = 512) -> int:
    embeddings = vocab * d + pos * d + 2 * d + 2 * d
    layer = 4 * (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 4 * d
    pooler = d * d + d
    return embeddings + layers * layer + pooler


def _bert_flops(layers: int, d: int, ffn: int, seq: int, pooler: bool) -> int:
    matmul = 2 * layers * (4 * d * d + 2 * d * ffn) * seq
    attention = 4 * seq * seq * d * layers
    return matmul + attention + (2 * d * d if pooler else 0)


def _bert_activations(layers: int, d: int, ffn: int, seq: int, pooler: bool) -> int:
    sd, sf = seq * d, seq * ffn
    head = 4 * d if pooler else 2 * d
    return layers * (24 * sd + 4 * sf) + (4 * sd + seq) + 2 * seq + head


ENCODERS = {
    # name: (layers, hidden, ffn, seq, runs the pooler)
    "bert-base": (12, 768, 3072, 128, True),
    "bert-large": (24, 1024, 4096, 128, True),
    "bge-large-en": (24, 1024, 4096, 256, False),
    "bge-small-en": (12, 384, 1536, 256, False),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_arithmetic_matches_the_card(name):
    # The layer list, at any sequence length, against the closed-form BERT arithmetic: GEMM and
    # attention FLOPs exact, element-wise work (GELU, LayerNorm, gathers) under 1% on top.
    if name not in available_model_names():
        pytest.skip(f"{name} not shipped")
    layers, d, ffn, seq, pooler = ENCODERS[name]
    default = load_model_card(name)
    assert default.sequence_length == (384 if name.startswith("bert") else 512)
    for s in (seq, default.sequence_length):
        card = default.at_sequence_length(s)
        assert card.params == _bert_params(layers, d, ffn)
        math_flops = sum(c.flops for c in card.layer_costs() if c.family in ("gemm", "attention"))
        assert math_flops == _bert_flops(layers, d, ffn, s, pooler)
        assert card.flops_per_sample == pytest.approx(math_flops, rel=0.01)
        assert card.activation_elements_per_sample == pytest.approx(
            _bert_activations(layers, d, ffn, s, pooler), rel=0.01
        )
        assert card.peak_activation_elements_per_sample == 2 * s * ffn  # bias + GELU in + out
        assert card.input == f"{s} tokens"


def test_published_parameter_counts():
    assert load_model_card("bert-base").params == pytest.approx(110e6, rel=0.05)
    assert load_model_card("bert-large").params == pytest.approx(340e6, rel=0.05)
    assert load_model_card("bge-large-en").params == pytest.approx(335e6, rel=0.01)
    assert load_model_card("resnet-50").params == 25_557_032  # torchvision num_params


def test_resnet50_flops_are_twice_torchvision_macs():
    # torchvision's "GFLOPS 4.09" column counts multiply-accumulates; capsim counts 2 x MACs.
    card = load_model_card("resnet-50")
    assert card.flops_per_sample == pytest.approx(2 * 4.09e9, rel=0.01)
    assert round(card.flops_per_sample / 1e9, 1) == 8.2


@pytest.mark.parametrize(
    ("name", "gmacs", "params"),
    [("mobilenet-v2", 0.30, 3_504_872), ("efficientnet-b0", 0.39, 5_288_548)],
)
def test_small_cnns_match_torchvision(name, gmacs, params):
    if name not in available_model_names():
        pytest.skip(f"{name} not shipped")
    card = load_model_card(name)
    assert card.params == params
    assert card.flops_per_sample == pytest.approx(2 * gmacs * 1e9, rel=0.02)


def test_flops_roughly_two_flops_per_parameter_per_token():
    # A transformer encoder does 2 FLOPs per matmul weight per token (embeddings do no math), plus
    # attention 4*s^2*d per layer: with ffn = 4d that is a factor 1 + s / (6 d) over the matmuls.
    for name, (layers, d, ffn, seq, _) in ENCODERS.items():
        if name not in available_model_names():
            continue
        card = load_model_card(name).at_sequence_length(seq)
        assert ffn == 4 * d
        matmul_weights = layers * (4 * d * d + 2 * d * ffn)
        ratio = card.flops_per_sample / (2 * matmul_weights * seq)
        assert ratio == pytest.approx(1 + seq / (6 * d), rel=1e-2), name  # + element-wise work
        assert not math.isclose(card.flops_per_sample, 2 * card.params * seq, rel_tol=0.01)
