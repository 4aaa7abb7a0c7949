"""The one output validator: eval's validity metric and serve's response check both call it.

Validators are built with an explicit empty `referencing.Registry()`, so a `$ref` is only ever resolved
inside the schema itself and nothing is fetched (RELIABILITY A2), and with `FormatChecker`, so
`format` is checked and not merely annotated.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, NamedTuple

from jsonschema import FormatChecker, validators
from jsonschema.protocols import Validator
from referencing import Registry

Schema = dict[str, Any]


class OutputError(NamedTuple):
    """One violation: where in the value (a JSON pointer, "" for the root) and what."""

    pointer: str
    message: str


def pointer_of(path: Any) -> str:
    """A JSON pointer (RFC 6901) for a jsonschema error path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Validator:
    schema = json.loads(schema_text)
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    return cls(schema, registry=Registry(), format_checker=FormatChecker())


def validator_for_schema(schema: Schema) -> Validator:
    """A cached validator; the cache key is the schema's exact JSON text."""
    return _validator(json.dumps(schema, sort_keys=True))


def output_errors(schema: Schema, value: Any) -> list[OutputError]:
    """Every way `value` breaks `schema`, deepest first; an empty list means valid."""
    errors = validator_for_schema(schema).iter_errors(value)
    found = sorted(errors, key=lambda e: (-len(e.absolute_path), list(map(str, e.absolute_path))))
    return [OutputError(pointer_of(e.absolute_path), e.message) for e in found]
