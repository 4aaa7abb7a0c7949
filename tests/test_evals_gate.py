"""The release gate: policy files, the paired bootstrap, and the pure decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.evaluate import EvalReport
from evals.gate import GateError, GatePolicy, decide_gate, load_policy, paired_bootstrap
from evals.metrics import ModeMetrics, PairScore


def scores(tps: list[int], total: int = 4) -> list[PairScore]:
    """Per-pair scores with `tp` right of `total` expected leaves and nothing extra predicted."""
    return [
        PairScore(
            pair=i,
            parsed=True,
            valid=True,
            truncated=False,
            exact=tp == total,
            tp=tp,
            fp=0,
            fn=total - tp,
            errors=[],
            wrong_fields=[],
        )
        for i, tp in enumerate(tps)
    ]


def metrics(valid: float, f1: float) -> ModeMetrics:
    return ModeMetrics(
        n=40,
        parse_rate=valid,
        valid_rate=valid,
        truncated_rate=0,
        exact_match=0,
        precision=f1,
        recall=f1,
        f1=f1,
        field_accuracy={},
        enum_confusion={},
        latency_p50_s=0.1,
        latency_p95_s=0.2,
        tokens_per_s=50,
    )


def report(n: int = 40, valid=(1.0, 1.0), f1: float = 0.8, live: list[PairScore] | None = None) -> EvalReport:
    cand = scores([3] * n)
    pairs = {"candidate": {"constrained": cand, "unconstrained": cand}}
    found = {"candidate": {"constrained": metrics(valid[0], f1), "unconstrained": metrics(valid[1], f1)}}
    if live is not None:
        pairs["live"] = {"constrained": live, "unconstrained": live}
    return EvalReport(
        run_id="r1",
        schema_name="s",
        schema_version="v",
        source="split test",
        engine="vllm",
        n_pairs=n,
        max_tokens=64,
        adapters={"candidate": "s-abc"},
        metrics=found,
        pairs=pairs,
        created_at="now",
    )


def test_defaults_pass_a_good_run_without_live_release() -> None:
    verdict = decide_gate(report(), GatePolicy())
    assert verdict.passed
    assert [r.rule for r in verdict.rules] == [
        "test size",
        "constrained schema-valid rate",
        "unconstrained schema-valid rate",
        "field F1 (constrained)",
        "no regression vs live (field F1)",
    ]
    assert verdict.rules[-1].detail == "no live release to compare with"


@pytest.mark.parametrize(
    ("kwargs", "failing"),
    [
        ({"n": 5}, "test size"),
        ({"valid": (0.97, 1.0)}, "constrained schema-valid rate"),
        ({"valid": (1.0, 0.5)}, "unconstrained schema-valid rate"),
        ({"f1": 0.3}, "field F1 (constrained)"),
    ],
)
def test_each_threshold_rule_can_fail(kwargs: dict, failing: str) -> None:
    verdict = decide_gate(report(**kwargs), GatePolicy())
    assert not verdict.passed
    assert [r.rule for r in verdict.rules if not r.passed] == [failing]


def test_clear_regression_against_live_fails() -> None:
    verdict = decide_gate(report(live=scores([4] * 40)), GatePolicy())  # live is perfect, candidate 3/4
    rule = verdict.rules[-1]
    assert not verdict.passed and not rule.passed
    assert rule.value is not None and rule.value < -0.02


def test_live_release_that_could_not_be_compared_fails_the_regression_rule() -> None:
    skipped = report().model_copy(
        update={"live_skipped": "the live release s-1 could not be loaded: corrupted"}
    )
    rule = decide_gate(skipped, GatePolicy()).rules[-1]
    assert not rule.passed and "corrupted" in rule.detail


def test_noise_within_tolerance_passes() -> None:
    # Live gets one pair more right out of 40: the interval straddles 0, well inside a 0.1 tolerance.
    live = scores([3] * 39 + [4])
    verdict = decide_gate(report(live=live), GatePolicy(max_regression=0.1))
    assert verdict.rules[-1].passed


def test_paired_bootstrap_interval_contains_point_and_is_reproducible() -> None:
    cand, live = scores([4, 3, 2, 4, 1, 4, 3, 0] * 5), scores([3, 3, 3, 3, 3, 3, 3, 3] * 5)
    point, low, high = paired_bootstrap(cand, live, 1000, 0.95, seed=1)
    assert low <= point <= high
    assert (point, low, high) == paired_bootstrap(cand, live, 1000, 0.95, seed=1)
    same = paired_bootstrap(live, live, 500, 0.95, seed=1)
    assert same == (0.0, 0.0, 0.0)  # paired: identical models never differ, whatever the resample


def test_policy_file_beside_the_schema(tmp_path: Path) -> None:
    assert load_policy(tmp_path, "s") == (GatePolicy(), "defaults")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "gate.yaml").write_text("min_field_f1: 0.9\nmin_test_size: 5\n")
    policy, source = load_policy(tmp_path, "s")
    assert (
        policy.min_field_f1 == 0.9 and policy.min_test_size == 5 and policy.min_constrained_valid_rate == 1.0
    )
    assert source.endswith("s/gate.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("min_field_f1: 2\n", "/min_field_f1"),
        ("min_feild_f1: 0.5\n", "/min_feild_f1"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "gate.yaml").write_text(text)
    with pytest.raises(GateError, match=r"gate\.yaml") as err:
        load_policy(tmp_path, "s")
    assert needle in str(err.value)
