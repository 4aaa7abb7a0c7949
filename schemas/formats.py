"""The `format` values forma can check, and the checker the output validator uses (RELIABILITY A6).

jsonschema's `FormatChecker` checks only the formats whose optional libraries are installed; here that
left `date-time`, `uri`, `hostname` and `duration` unchecked, so `{"format": "date-time"}` passed any
string, and its `time` was draft 3's `HH:MM:SS`, which refuses RFC 3339's `12:00:00Z`. The missing
string formats of JSON Schema 2020-12 are added here with their RFC grammars, as anchored regexes
without nested ambiguous repeats. A `format` outside `CHECKED_FORMATS` is refused at registration
(`schemas.checks.check_formats`): a keyword nobody checks would be a silent pass.
"""

from __future__ import annotations

import re
from datetime import date

from jsonschema import FormatChecker

_TIME = r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
_DATE_TIME_RE = re.compile(rf"(\d{{4}})-(\d{{2}})-(\d{{2}})[Tt]{_TIME}", re.ASCII)
_TIME_RE = re.compile(_TIME, re.ASCII)
# RFC 3339 appendix A: P(n)W, or a date part (Y, M, D in order, contiguous) and/or a time part after T.
_DUR_TIME = r"T(?:\d+H(?:\d+M(?:\d+S)?)?|\d+M(?:\d+S)?|\d+S)"
_DURATION_RE = re.compile(
    rf"P(?:(?:\d+D|\d+M(?:\d+D)?|\d+Y(?:\d+M(?:\d+D)?)?)(?:{_DUR_TIME})?|{_DUR_TIME}|\d+W)", re.ASCII
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
# RFC 3986: unreserved, reserved and percent-encoded characters; a scheme for an absolute URI.
_URI_CHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]]|%[0-9A-Fa-f]{2})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*:"
_URI_RE = re.compile(rf"{_SCHEME}{_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII)
_URI_REF_RE = re.compile(rf"(?:{_SCHEME})?{_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII)
# RFC 6570: literals, and expressions {op? varspec(,varspec)*} with :prefix or * modifiers.
_VARCHAR = r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})"
_VARSPEC = rf"{_VARCHAR}+(?:\.{_VARCHAR}+)*(?::[1-9][0-9]{{0,3}}|\*)?"
_URI_TEMPLATE_RE = re.compile(
    rf"(?:[^\x00-\x20\"'<>\\^`{{|}}\x7f]|%[0-9A-Fa-f]{{2}}|\{{[+#./;?&=,!@|]?{_VARSPEC}(?:,{_VARSPEC})*\}})*"
)
_JSON_POINTER_RE = re.compile(r"(?:/(?:[^~/]|~[01])*)*")
_RELATIVE_POINTER_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:#|(?:/(?:[^~/]|~[01])*)*)")


def _valid_clock(hour: str, minute: str, second: str, off_h: str | None, off_m: str | None) -> bool:
    return (
        int(hour) <= 23
        and int(minute) <= 59
        and int(second) <= 60  # 60: a leap second
        and (off_h is None or (int(off_h) <= 23 and int(off_m or 0) <= 59))
    )


def is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _DATE_TIME_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, *clock = match.groups()
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return _valid_clock(*clock)


def is_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _TIME_RE.fullmatch(value)
    return match is not None and _valid_clock(*match.groups())


def is_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return len(value) <= 253 and _HOSTNAME_RE.fullmatch(value) is not None


def _matcher(pattern: re.Pattern[str]):  # type: ignore[no-untyped-def]
    def check(value: object) -> bool:
        return not isinstance(value, str) or pattern.fullmatch(value) is not None

    return check


def build_checker() -> FormatChecker:
    """jsonschema's own checkers, plus the string formats it leaves unchecked without extra libraries."""
    checker = FormatChecker()
    extra = {
        "date-time": is_date_time,
        "time": is_time,  # replaces draft 3's HH:MM:SS: 2020-12 means RFC 3339 full-time, offset included
        "duration": _matcher(_DURATION_RE),
        "hostname": is_hostname,
        "uri": _matcher(_URI_RE),
        "uri-reference": _matcher(_URI_REF_RE),
        "uri-template": _matcher(_URI_TEMPLATE_RE),
        "json-pointer": _matcher(_JSON_POINTER_RE),
        "relative-json-pointer": _matcher(_RELATIVE_POINTER_RE),
    }
    for name, func in extra.items():
        checker.checks(name)(func)
    return checker


FORMAT_CHECKER = build_checker()
CHECKED_FORMATS = frozenset(FORMAT_CHECKER.checkers)
