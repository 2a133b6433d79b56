"""Which policy `capsim whatif` measures savings against, when the policies are replaced (issue 15)."""

from __future__ import annotations

import pytest

from capsim.errors import InputError
from capsim.planning.whatif import pick_baseline
from capsim.spec.autoscaling import FixedSpec, HPASpec, KPASpec

HPA = HPASpec(kind="hpa", target=80, max_replicas=8)
KPA = KPASpec(kind="kpa", target=6)
FIXED = FixedSpec(kind="fixed", replicas="peak")


def test_replaced_policies_fall_back_to_the_given_fixed_policy() -> None:
    base, why = pick_baseline([HPA, FIXED, KPA], None, "fixed-peak", own=False)
    assert base == "fixed"
    assert "first fixed policy" in why and "'fixed-peak' is not used" in why


def test_without_a_fixed_policy_the_first_is_the_baseline() -> None:
    assert pick_baseline([KPA, HPA], None, None, own=False)[0] == "kpa"


def test_the_scenario_baseline_holds_for_its_own_policies_and_a_named_one_wins() -> None:
    named = FixedSpec(kind="fixed", name="fixed-peak", replicas="peak")
    assert pick_baseline([HPA, named], None, "fixed-peak", own=True)[0] == "fixed-peak"
    assert pick_baseline([HPA, named], "hpa", "fixed-peak", own=True) == (
        "hpa",
        "baseline: hpa, as named",
    )


def test_a_named_baseline_that_is_not_compared_is_refused() -> None:
    with pytest.raises(InputError, match="baseline 'nope' is not one of"):
        pick_baseline([HPA, KPA], "nope", None, own=False)
