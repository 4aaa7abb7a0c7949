"""The one place evals checks an output against its schema: the project's single output validator.

`schemas.validation.output_errors` (Draft 2020-12 with format checking, no remote `$ref`) is the same
check the server runs on every response, so "schema-valid" means the same thing in eval and serve.
"""

from __future__ import annotations

from typing import Any

from schemas.validation import output_errors as registry_errors

Errors = list[tuple[str, str]]


def output_errors(schema: dict[str, Any], value: Any) -> Errors:
    """(JSON pointer, message) for every way `value` breaks `schema`; empty when valid."""
    return [(error.pointer, error.message) for error in registry_errors(schema, value)]
