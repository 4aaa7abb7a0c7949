"""The release gate: a policy per schema and a pure decision over an eval report.

The policy lives beside the schema in the registry, `<registry>/<name>/gate.yaml`; every field is
optional and defaults as documented below. The regression rule compares the candidate with the live
release on the same pairs with a paired bootstrap: it fails only when the confidence interval of
(candidate F1 - live F1) reaches below -tolerance, so one unlucky pair does not block a release and a
real drop cannot hide behind a lucky point estimate.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals.evaluate import EvalReport
from evals.metrics import PairScore, prf

GATE_FILE = "gate.yaml"
GATE_JSON = "gate.json"


class GateError(ValueError):
    """A gate policy file that cannot be used, naming the file, the field and the fix."""


class GatePolicy(BaseModel):
    """What a candidate must reach to be promoted. Write any subset in <registry>/<name>/gate.yaml."""

    model_config = ConfigDict(extra="forbid")

    min_constrained_valid_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of schema-valid outputs with constrained decoding (what serve runs).",
    )
    min_unconstrained_valid_rate: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Share of schema-valid outputs without constraints: has it learned the schema?",
    )
    min_field_f1: float = Field(
        default=0.5, ge=0, le=1, description="Field-level micro F1, constrained mode."
    )
    min_test_size: int = Field(default=20, ge=1, description="Fewest evaluated pairs a verdict may rest on.")
    max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Largest drop in constrained field F1 against the live release tolerated.",
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="Confidence level of the bootstrap interval."
    )
    bootstrap_samples: int = Field(
        default=2000, ge=100, description="Bootstrap resamples of the evaluated pairs."
    )
    seed: int = Field(default=0, description="Seed of the bootstrap, so a verdict is reproducible.")


class RuleResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


class GateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    passed: bool
    rules: list[RuleResult]
    eval_created_at: str = Field(description="The eval.json the verdict was decided on.")
    policy: GatePolicy
    policy_source: str


def load_policy(registry: Path, name: str) -> tuple[GatePolicy, str]:
    """The schema's gate policy and where it came from ("defaults" when it has no gate.yaml)."""
    path = registry / name / GATE_FILE
    if not path.is_file():
        return GatePolicy(), "defaults"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return GatePolicy.model_validate(raw), str(path)
    except yaml.YAMLError as err:
        raise GateError(f"{path}: not valid YAML ({err})") from err
    except ValidationError as err:
        first = err.errors()[0]
        field = "/" + "/".join(str(p) for p in first["loc"])
        known = ", ".join(GatePolicy.model_fields)
        raise GateError(f"{path}: {field}: {first['msg']}; the policy fields are: {known}") from err


def paired_bootstrap(
    candidate: list[PairScore], live: list[PairScore], samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """(point, low, high) of candidate F1 - live F1, resampling the same pairs for both."""
    cand = {s.pair: s for s in candidate}
    both = [(cand[s.pair], s) for s in live if s.pair in cand]

    def diff(rows: list[tuple[PairScore, PairScore]]) -> float:
        c = prf(sum(a.tp for a, _ in rows), sum(a.fp for a, _ in rows), sum(a.fn for a, _ in rows))[2]
        b = prf(sum(b.tp for _, b in rows), sum(b.fp for _, b in rows), sum(b.fn for _, b in rows))[2]
        return c - b

    rng = random.Random(seed)
    draws = sorted(diff([both[rng.randrange(len(both))] for _ in both]) for _ in range(samples))
    tail = (1 - confidence) / 2
    low = draws[int(tail * (samples - 1))]
    high = draws[int((1 - tail) * (samples - 1))]
    return diff(both), low, high


def _threshold_rule(rule: str, value: float, threshold: float) -> RuleResult:
    return RuleResult(
        rule=rule, value=value, threshold=threshold, passed=value >= threshold, detail=f">= {threshold}"
    )


def regression_rule(report: EvalReport, policy: GatePolicy) -> RuleResult:
    live = report.pairs.get("live", {}).get("constrained")
    if not live and report.live_skipped:
        return RuleResult(
            rule="no regression vs live (field F1)",
            value=None,
            threshold=-policy.max_regression,
            passed=False,
            detail=report.live_skipped,
        )
    if not live:
        return RuleResult(
            rule="no regression vs live (field F1)",
            value=None,
            threshold=-policy.max_regression,
            passed=True,
            detail="no live release to compare with",
        )
    point, low, high = paired_bootstrap(
        report.pairs["candidate"]["constrained"],
        live,
        policy.bootstrap_samples,
        policy.confidence,
        policy.seed,
    )
    return RuleResult(
        rule="no regression vs live (field F1)",
        value=low,
        threshold=-policy.max_regression,
        passed=low >= -policy.max_regression,
        detail=f"F1 change {point:+.3f}, {policy.confidence:.0%} CI [{low:+.3f}, {high:+.3f}]; lower bound >= "
        f"{-policy.max_regression:+.3f}",
    )


def decide_gate(report: EvalReport, policy: GatePolicy, policy_source: str = "defaults") -> GateVerdict:
    """Every rule with its value and verdict; the gate passes only when all pass. Pure."""
    constrained = report.metrics["candidate"]["constrained"]
    unconstrained = report.metrics["candidate"]["unconstrained"]
    rules = [
        _threshold_rule("test size", report.n_pairs, policy.min_test_size),
        _threshold_rule(
            "constrained schema-valid rate", constrained.valid_rate, policy.min_constrained_valid_rate
        ),
        _threshold_rule(
            "unconstrained schema-valid rate", unconstrained.valid_rate, policy.min_unconstrained_valid_rate
        ),
        _threshold_rule("field F1 (constrained)", constrained.f1, policy.min_field_f1),
        regression_rule(report, policy),
    ]
    return GateVerdict(
        run_id=report.run_id,
        passed=all(r.passed for r in rules),
        eval_created_at=report.created_at,
        rules=rules,
        policy=policy,
        policy_source=policy_source,
    )
