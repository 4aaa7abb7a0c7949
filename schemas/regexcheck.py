"""Regex `pattern`s must compile and must not backtrack catastrophically (RELIABILITY A4).

The output validator matches patterns with Python's backtracking `re`, in the serving process, so a
pattern like `^(a+)+$` could stall a request for minutes. We refuse the known catastrophic shape: an
unbounded repeat whose body can match the same text in more than one way, i.e. it holds another
unbounded repeat with no mandatory separator it cannot eat, or an alternation whose branches overlap.
"""

from __future__ import annotations

import re
from typing import Any

import regex

try:  # Python 3.11 ships the parser as re._parser; older ones as sre_parse.
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

MAX_PATTERN_CHARS = 512
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}
_UNBOUNDED = 50  # a repeat allowing more than this many is treated as unbounded


def _first_chars(items: Any) -> set[Any] | None:
    """A rough set of what a sequence can start with (None: anything, e.g. it may be empty)."""
    for op, av in items:
        if op == sre_parse.LITERAL:
            return {av}
        if op == sre_parse.IN:
            return {("set", repr(av))}
        if op in (sre_parse.AT,):
            continue
        return None
    return None


def _can_be_empty(items: Any) -> bool:
    for op, av in items:
        if op in _REPEATS and av[0] == 0:
            continue
        if op == sre_parse.AT:
            continue
        if op == sre_parse.SUBPATTERN and _can_be_empty(av[-1]):
            continue
        if op == sre_parse.BRANCH and any(_can_be_empty(b) for b in av[1]):
            continue
        return False
    return True


def _set_has(ch: str, items: Any) -> bool:
    """Whether a character class (parsed `IN` items) matches `ch`."""
    negate, hit = False, False
    for op, av in items:
        if op == sre_parse.NEGATE:
            negate = True
        elif op == sre_parse.LITERAL:
            hit |= chr(av) == ch
        elif op == sre_parse.RANGE:
            hit |= av[0] <= ord(ch) <= av[1]
        elif op == sre_parse.CATEGORY:
            hit |= bool(
                re.fullmatch(
                    {"CATEGORY_DIGIT": r"\d", "CATEGORY_WORD": r"\w", "CATEGORY_SPACE": r"\s"}.get(
                        str(av), "[^\\d\\w\\s]"
                    ),
                    ch,
                )
            ) != str(av).startswith("CATEGORY_NOT")
    return hit != negate


def _can_eat(ch: str, items: Any) -> bool:
    """Whether anything in `items` could consume the character `ch`."""
    for op, av in items:
        if (op == sre_parse.LITERAL and chr(av) == ch) or op == sre_parse.ANY or op == sre_parse.NOT_LITERAL:
            return True
        if op == sre_parse.IN and _set_has(ch, av):
            return True
        children = (
            [av[2]]
            if op in _REPEATS
            else [av[-1]]
            if op == sre_parse.SUBPATTERN
            else list(av[1])
            if op == sre_parse.BRANCH
            else []
        )
        if any(_can_eat(ch, child) for child in children):
            return True
    return False


def _delimited(body: Any) -> bool:
    """The body starts with a literal that nothing after it can eat (`(\\.[0-9]+)*`): each iteration
    then starts at a fixed character, so the text splits into iterations one way only."""
    while len(body) == 1 and body[0][0] == sre_parse.SUBPATTERN:
        body = list(body[0][1][-1])
    if not body or body[0][0] != sre_parse.LITERAL:
        return False
    return not _can_eat(chr(body[0][1]), body[1:])


def _ambiguous_body(body: Any) -> bool:
    """True when repeating `body` can split one text in exponentially many ways."""
    if _delimited(list(body)):
        return False
    inner = [av for op, av in body if op in _REPEATS and av[1] > _UNBOUNDED]
    groups = [av[-1] for op, av in body if op == sre_parse.SUBPATTERN]
    branches = [av[1] for op, av in body if op == sre_parse.BRANCH]
    for group in groups:
        if _ambiguous_body(group):
            return True
    for alts in branches:
        firsts = [_first_chars(b) for b in alts]
        if any(f is None for f in firsts) or len({repr(sorted(map(repr, f or []))) for f in firsts}) < len(
            firsts
        ):
            return True
        if any(_can_be_empty(b) for b in alts):
            return True
    if _can_be_empty(body):
        return True
    if inner:
        repeats = [(op, av) for op, av in body if op in _REPEATS and av[1] > _UNBOUNDED]
        separators = [av for op, av in body if op == sre_parse.LITERAL and not _can_eat(chr(av), repeats)]
        return not separators
    return False


def _catastrophic(items: Any) -> bool:
    for op, av in items:
        if op in _REPEATS and av[1] > _UNBOUNDED and _ambiguous_body(av[2]):
            return True
        children = [av[2]] if op in _REPEATS else [av[-1]] if op == sre_parse.SUBPATTERN else []
        if op == sre_parse.BRANCH:
            children = list(av[1])
        if any(_catastrophic(child) for child in children):
            return True
    return False


def pattern_problem(pattern: Any) -> str | None:
    """Why `pattern` is refused (a sentence with the fix), or None when it is fine."""
    if not isinstance(pattern, str):
        return "a pattern must be a string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"the pattern is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}"
    if "\x00" in pattern:
        return "the pattern contains a NUL character; remove it"
    try:
        re.compile(pattern)
        regex.compile(pattern)  # the engine the output validator matches with (schemas.validation)
        parsed = sre_parse.parse(pattern)
    except (re.error, regex.error, RecursionError, OverflowError) as err:
        return f"the pattern does not compile ({err}); write it as a valid regular expression"
    if _catastrophic(list(parsed)):
        return (
            "the pattern nests repeats that can match the same text in many ways (catastrophic "
            "backtracking, like `(a+)+`); rewrite it so each repeated part has a fixed separator, "
            "e.g. `(a+,)*` instead of `(a+)*`"
        )
    return None
