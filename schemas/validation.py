"""The one output validator: eval's validity metric and serve's response check both call it.

Validators are built with an explicit empty `referencing.Registry()`, so a `$ref` is only ever resolved
inside the schema itself and nothing is fetched (RELIABILITY A2), and with forma's format checker
(`schemas.formats`), so `format` is checked and not merely annotated.

`pattern`, `patternProperties` and `additionalProperties` match with the `regex` module under a time
bound instead of jsonschema's `re.search` (RELIABILITY A4): the serving process validates every model
output, and a pattern that slipped past the static ReDoS check (`^(.*?,){20}P` backtracks for hours
in `re`) must cost a bounded time, not a stalled server. A match that runs out of time is a
validation error: the output is refused, never passed unchecked. `regex` also releases the GIL while
it matches, so other threads keep running.

The budget is CPU time, not wall time: on a busy machine a thread waiting for a core must not turn an
ordinary match (microseconds) into a refusal. `regex`'s own `timeout` counts the process's CPU time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, NamedTuple

import regex
from jsonschema import ValidationError, validators
from jsonschema.protocols import Validator
from referencing import Registry

from schemas.formats import FORMAT_CHECKER

Schema = dict[str, Any]
MATCH_BUDGET_S = 0.25  # CPU seconds for all the pattern matching of one `output_errors` call
_DEADLINE: ContextVar[float | None] = ContextVar("forma_match_deadline", default=None)  # thread CPU time


class OutputError(NamedTuple):
    """One violation: where in the value (a JSON pointer, "" for the root) and what."""

    pointer: str
    message: str


class MatchTimeout(Exception):
    """A pattern match ran out of the time budget (or `regex` cannot run the pattern at all)."""


def pointer_of(path: Any) -> str:
    """A JSON pointer (RFC 6901) for a jsonschema error path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@contextmanager
def match_budget(seconds: float = MATCH_BUDGET_S) -> Iterator[None]:
    """Every pattern match inside (in this thread) shares one CPU-time deadline."""
    token = _DEADLINE.set(time.thread_time() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def search(pattern: str, text: str) -> bool:
    """`re.search` semantics, bounded by the current budget (MATCH_BUDGET_S when none is set)."""
    deadline = _DEADLINE.get()
    left = MATCH_BUDGET_S if deadline is None else deadline - time.thread_time()
    if left <= 0:
        raise MatchTimeout(pattern)
    try:
        return regex.search(pattern, text, timeout=left) is not None
    except (TimeoutError, regex.error):  # regex.error: registration refuses such patterns; never crash
        raise MatchTimeout(pattern) from None


def _timed_out(pattern: str) -> ValidationError:
    return ValidationError(
        f"could not be matched against {pattern!r} within {MATCH_BUDGET_S} s of CPU (a pattern "
        "that backtracks); the value is refused unchecked"
    )


def _pattern(validator: Any, pattern: str, instance: Any, schema: Schema) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        if not search(pattern, instance):
            yield ValidationError(f"{instance!r} does not match {pattern!r}")
    except MatchTimeout:
        yield _timed_out(pattern)


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = search(pattern, key)
            except MatchTimeout:
                yield _timed_out(pattern)
                return
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, extra_schema: Any, instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
    extras = []
    for key in instance:
        try:
            if key not in declared and not any(search(p, key) for p in patterns):
                extras.append(key)
        except MatchTimeout as err:
            yield _timed_out(str(err))
            return
    if validator.is_type(extra_schema, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra_schema, path=key)
    elif not extra_schema and extras:  # jsonschema's own wording
        listed = ", ".join(repr(k) for k in sorted(extras, key=str))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            regexes = ", ".join(repr(p) for p in sorted(patterns))
            yield ValidationError(f"{listed} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


@lru_cache(maxsize=16)
def _bounded(cls: Any) -> Any:
    """`cls` (a jsonschema draft) with forma's time-bounded pattern keywords."""
    return validators.extend(
        cls,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    )


def build_validator(schema: Schema) -> Validator:
    """The validator for `schema`'s declared draft (2020-12 by default), with no remote `$ref`."""
    cls = _bounded(validators.validator_for(schema, default=validators.Draft202012Validator))
    return cls(schema, registry=Registry(), format_checker=FORMAT_CHECKER)  # type: ignore[no-any-return]


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Validator:
    return build_validator(json.loads(schema_text))


def validator_for_schema(schema: Schema) -> Validator:
    """A cached validator; the cache key is the schema's exact JSON text."""
    return _validator(json.dumps(schema, sort_keys=True))


def output_errors(schema: Schema, value: Any) -> list[OutputError]:
    """Every way `value` breaks `schema`, deepest first; an empty list means valid."""
    with match_budget():
        errors = list(validator_for_schema(schema).iter_errors(value))
    found = sorted(errors, key=lambda e: (-len(e.absolute_path), list(map(str, e.absolute_path))))
    return [OutputError(pointer_of(e.absolute_path), e.message) for e in found]
