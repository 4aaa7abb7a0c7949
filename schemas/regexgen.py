"""Draw a string that matches a regex, by walking its parse tree (for probes and synthetic pairs)."""

from __future__ import annotations

import random
import re
from typing import Any

from schemas.regexcheck import sre_parse

_CATEGORY = {
    "CATEGORY_DIGIT": "0123456789",
    "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_DIGIT": "abcxyz",
    "CATEGORY_NOT_WORD": "-.+",
    "CATEGORY_NOT_SPACE": "abc123",
}
_ANY = "abcdefghijklmnopqrstuvwxyz0123456789"


def _from_set(items: Any, rng: random.Random) -> str:
    if items and items[0][0] == sre_parse.NEGATE:
        banned = {chr(av) for op, av in items if op == sre_parse.LITERAL}
        return rng.choice([c for c in _ANY if c not in banned] or ["~"])
    choices: list[str] = []
    for op, av in items:
        if op == sre_parse.LITERAL:
            choices.append(chr(av))
        elif op == sre_parse.RANGE:
            low, high = av
            choices.extend(chr(c) for c in range(low, min(high, low + 40) + 1))
        elif op == sre_parse.CATEGORY:
            choices.extend(_CATEGORY.get(str(av), "a"))
    return rng.choice(choices or ["a"])


def _emit(items: Any, rng: random.Random, groups: dict[int, str]) -> str:
    out = []
    for op, av in items:
        if op == sre_parse.LITERAL:
            out.append(chr(av))
        elif op == sre_parse.NOT_LITERAL:
            out.append("a" if chr(av) != "a" else "b")
        elif op == sre_parse.ANY:
            out.append(rng.choice(_ANY))
        elif op == sre_parse.IN:
            out.append(_from_set(av, rng))
        elif op == sre_parse.BRANCH:
            out.append(_emit(rng.choice(av[1]), rng, groups))
        elif op == sre_parse.SUBPATTERN:
            text = _emit(av[-1], rng, groups)
            if av[0]:
                groups[av[0]] = text
            out.append(text)
        elif op == sre_parse.GROUPREF:
            out.append(groups.get(av, ""))
        elif op in (
            sre_parse.MAX_REPEAT,
            sre_parse.MIN_REPEAT,
            getattr(sre_parse, "POSSESSIVE_REPEAT", None),
        ):
            low, high = av[0], av[1]
            count = rng.randint(low, min(high, low + 3))
            out.extend(_emit(av[2], rng, groups) for _ in range(count))
        elif op == getattr(sre_parse, "ATOMIC_GROUP", object()):
            out.append(_emit(av, rng, groups))
        # AT (anchors), ASSERT and friends emit nothing; the caller re-checks the result.
    return "".join(out)


def string_matching(pattern: str, rng: random.Random, tries: int = 20) -> str | None:
    """A string `re.search(pattern, s)` accepts, or None if the walk cannot find one."""
    parsed = sre_parse.parse(pattern)
    for _ in range(tries):
        text = _emit(list(parsed), rng, {})
        if re.search(pattern, text):
            return text
    return None
