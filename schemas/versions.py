"""Differences between two schema versions, as JSON pointers a person can read."""

from __future__ import annotations

import json
from typing import Any

from schemas.walk import escape


def diff_schemas(old: Any, new: Any, pointer: str = "") -> list[str]:
    """`+ /p: value`, `- /p: value` and `~ /p: old -> new` lines, depth first, in a stable order."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            at = f"{pointer}/{escape(key)}"
            if key not in new:
                lines.append(f"- {at}: {json.dumps(old[key], ensure_ascii=False)}")
            elif key not in old:
                lines.append(f"+ {at}: {json.dumps(new[key], ensure_ascii=False)}")
            else:
                lines += diff_schemas(old[key], new[key], at)
        return lines
    if old == new:
        return []
    return [
        f"~ {pointer or '/'}: {json.dumps(old, ensure_ascii=False)} -> {json.dumps(new, ensure_ascii=False)}"
    ]
