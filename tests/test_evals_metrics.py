"""Field matching and eval metrics: pure functions checked against hand-computed values."""

from __future__ import annotations

import pytest

from evals.fields import align, enum_fields, field_path, match_leaves
from evals.metrics import mode_metrics, parse_output, percentile, prf
from evals.records import GenerationRecord
from evals.validation import output_errors

SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"enum": ["low", "high"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
    },
    "required": ["priority"],
    "additionalProperties": False,
    "$defs": {
        "item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}
    },
}


def record(pair: int, expected, text: str, finish: str = "stop", latency: float = 1.0, tokens: int = 10):
    return GenerationRecord(
        model="candidate",
        mode="constrained",
        pair=pair,
        input=f"text {pair}",
        expected=expected,
        adapter="x-0",
        text=text,
        finish_reason=finish,
        tokens=tokens,
        latency_s=latency,
    )


def test_scalar_arrays_compare_as_multisets() -> None:
    match = match_leaves({"tags": ["a", "b", "b"]}, {"tags": ["b", "a", "c"]})
    assert sum(match.tp.values()) == 2
    assert dict(match.fp) == {("/tags/*", '"c"'): 1}
    assert dict(match.fn) == {("/tags/*", '"b"'): 1}


def test_object_arrays_are_aligned_by_best_match_not_index() -> None:
    expected = {"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]}
    predicted = {"items": [{"sku": "B", "qty": 2}, {"sku": "A", "qty": 5}]}
    match = match_leaves(expected, predicted)
    assert sum(match.tp.values()) == 3
    assert dict(match.fn) == {("/items/0/qty", "1"): 1}
    assert dict(match.fp) == {("/items/0/qty", "5"): 1}
    assert align(expected["items"], predicted["items"]) == [1, 0]


def test_extra_predicted_objects_are_false_positives() -> None:
    match = match_leaves({"items": [{"sku": "A"}]}, {"items": [{"sku": "Z"}, {"sku": "A"}]})
    assert sum(match.tp.values()) == 1
    assert sum(match.fp.values()) == 1
    assert not match.fn


def test_values_keep_their_json_type() -> None:
    match = match_leaves({"n": 1, "b": True}, {"n": 1.0, "b": 1})
    assert not match.tp


def test_missing_prediction_misses_every_leaf() -> None:
    match = match_leaves({"tags": ["a"], "priority": "low"}, None)
    assert sum(match.fn.values()) == 2 and not match.tp and not match.fp


def test_field_paths_and_enum_fields() -> None:
    assert field_path("/items/3/sku") == "/items/*/sku"
    assert enum_fields(SCHEMA) == {"/priority"}
    nested = {"type": "array", "items": {"type": "object", "properties": {"k": {"enum": [1, 2]}}}}
    assert enum_fields(nested) == {"/*/k"}


def test_prf_edge_cases() -> None:
    assert prf(0, 0, 0) == (1.0, 1.0, 1.0)
    assert prf(0, 1, 1) == (0.0, 0.0, 0.0)
    assert prf(0, 0, 3) == (0.0, 0.0, 0.0)  # nothing predicted, something expected
    assert prf(0, 2, 0) == (0.0, 0.0, 0.0)  # something predicted, nothing expected
    assert prf(2, 1, 1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([], 50) == 0.0


def test_truncated_output_is_never_parsed() -> None:
    assert parse_output(record(0, {}, '{"priority":"low"}', finish="length")) == (False, None)
    assert parse_output(record(0, {}, '{"priority":"low"}')) == (True, {"priority": "low"})
    assert parse_output(record(0, {}, "   ")) == (False, None)


def test_mode_metrics_by_hand() -> None:
    gold = {"priority": "high", "tags": ["x", "y"]}
    records = [
        record(
            0, gold, '{"priority":"high","tags":["y","x"]}', latency=1.0, tokens=10
        ),  # exact (array order aside)
        record(1, gold, '{"priority":"low","tags":["x"]}', latency=2.0, tokens=10),  # valid, partly right
        record(2, gold, '{"priority":"urgent"}', latency=3.0, tokens=10),  # parses, breaks the enum
        record(3, gold, '{"priority":"hi', finish="length", latency=4.0, tokens=10),  # truncated
    ]
    metrics, scores = mode_metrics(records, lambda v: output_errors(SCHEMA, v), enum_fields(SCHEMA))
    assert metrics.n == 4
    assert metrics.parse_rate == 0.75
    assert metrics.valid_rate == 0.5
    assert metrics.truncated_rate == 0.25
    assert metrics.exact_match == 0.0  # pair 0 has the tags in another order: not identical JSON
    # leaves: pair0 tp3; pair1 tp1 fp1 fn2; pairs 2, 3 invalid: fn3 each
    assert (sum(s.tp for s in scores), sum(s.fp for s in scores), sum(s.fn for s in scores)) == (4, 1, 8)
    assert metrics.precision == pytest.approx(4 / 5)
    assert metrics.recall == pytest.approx(4 / 12)
    assert metrics.field_accuracy["/priority"] == {"accuracy": 0.25, "n": 4}
    assert metrics.field_accuracy["/tags/*"] == {"accuracy": 0.25, "n": 4}
    assert metrics.enum_confusion["/priority"] == {"high": {"high": 1, "low": 1, "(invalid)": 2}}
    assert metrics.latency_p50_s == 2.5
    assert metrics.tokens_per_s == pytest.approx(40 / 10)
    assert scores[2].errors and scores[2].errors[0][0] == "/priority"
    assert scores[1].wrong_fields == ["/priority", "/tags/*"]


def test_exact_match_ignores_key_order() -> None:
    gold = {"priority": "low", "tags": []}
    metrics, _ = mode_metrics([record(0, gold, '{"tags":[],"priority":"low"}')], lambda v: [], set())
    assert metrics.exact_match == 1.0 and metrics.f1 == 1.0
