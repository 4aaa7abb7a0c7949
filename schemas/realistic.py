"""Realistic string values from a field's name or format, so synthetic pairs read like real documents."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import datetime

from faker import Faker

_FAKER = Faker("en_US")
# Fixed bounds: Faker's default dates are relative to today, so seeded draws would drift over time.
_START, _END = datetime(2015, 1, 1), datetime(2025, 12, 31)


def _fake(rng: random.Random) -> Faker:
    """The shared Faker, reseeded from `rng` so a fixed seed gives the same draws."""
    _FAKER.seed_instance(rng.getrandbits(32))
    return _FAKER


FORMATS: dict[str, Callable[[Faker], str]] = {
    "email": lambda f: f.email(),
    "date": lambda f: f.date_between_dates(_START, _END).isoformat(),
    "date-time": lambda f: f.date_time_between_dates(_START, _END).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "time": lambda f: f.time() + "Z",
    "uri": lambda f: f.url(),
    "uri-reference": lambda f: f.uri_path(),
    "hostname": lambda f: f.domain_name(),
    "ipv4": lambda f: f.ipv4(),
    "ipv6": lambda f: f.ipv6(),
    "uuid": lambda f: str(f.uuid4()),
}
# (name pattern, value) in priority order: the first that matches the property name wins.
NAMES: list[tuple[str, Callable[[Faker], str]]] = [
    (r"e_?mail", lambda f: f.email()),
    (r"first_?name|given", lambda f: f.first_name()),
    (r"last_?name|surname|family", lambda f: f.last_name()),
    (r"company|organi[sz]ation|vendor|employer", lambda f: f.company()),
    (r"phone|mobile|tel", lambda f: f.phone_number()),
    (r"city", lambda f: f.city()),
    (r"country", lambda f: f.country()),
    (r"street|address", lambda f: f.street_address()),
    (r"zip|postal", lambda f: f.postcode()),
    (r"url|link|website|homepage", lambda f: f.url()),
    (r"date|_at$|_on$", lambda f: f.date_between_dates(_START, _END).isoformat()),
    (r"title|subject|summary", lambda f: f.sentence(nb_words=5).rstrip(".")),
    (r"desc|comment|note|message|text", lambda f: f.sentence(nb_words=8)),
    (r"name", lambda f: f.name()),
    (r"id$|code|number|ref", lambda f: f.bothify("??-####").upper()),
]


def realistic_string(name: str, fmt: str | None, rng: random.Random) -> str:
    fake = _fake(rng)
    if fmt in FORMATS:
        return FORMATS[fmt](fake)
    lowered = name.lower()
    for pattern, make in NAMES:
        if re.search(pattern, lowered):
            return make(fake)
    return fake.word()
