"""Domain samplers for the bundled examples: outputs that hang together (an invoice total is the sum
of its lines, an email belongs to the person), which a generic schema sampler cannot know.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

from faker import Faker

SUMMARIES = {
    "billing": [
        "Charged twice for my monthly plan",
        "Refund not received after cancellation",
        "Invoice shows the wrong VAT number",
        "Card declined although it is valid",
        "Discount code was not applied at checkout",
        "Billed for seats we removed",
        "Need a copy of last month's invoice",
        "Annual plan renewed without notice",
    ],
    "technical": [
        "App crashes when I upload a photo",
        "Sync stopped working since the update",
        "Cannot connect to the API, timeout errors",
        "Dashboard shows a blank page",
        "Export to CSV produces an empty file",
        "Notifications arrive hours late",
        "Login page loops back to itself",
        "Search returns no results for any query",
    ],
    "account": [
        "Cannot reset my password",
        "Need to change the account owner email",
        "Two-factor codes are not accepted",
        "Please delete my account and data",
        "Locked out after too many attempts",
        "Want to merge two accounts",
        "Add a new admin to our workspace",
        "Username change request",
    ],
    "shipping": [
        "Package marked delivered but not here",
        "Order arrived damaged",
        "Tracking number does not work",
        "Wrong item in my parcel",
        "Delivery delayed by two weeks",
        "Need to change the delivery address",
        "Customs fees were not mentioned",
        "Half of my order is missing",
    ],
    "other": [
        "Question about your privacy policy",
        "Suggestion for a new feature",
        "Do you offer student discounts",
        "Partnership inquiry for our shop",
        "Feedback on the new design",
        "Where can I find the user manual",
    ],
}
PRODUCTS = [
    "Acme Cloud",
    "PhotoSync Pro",
    "Ledger Lite",
    "SmartHub X2",
    "TaskFlow",
    "Nimbus Drive",
    "Orbit Watch",
    "EcoKettle",
    "Pulse Earbuds",
    "DataDesk API",
]
ICD10 = [
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential (primary) hypertension"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("M54.5", "Low back pain"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("F41.1", "Generalized anxiety disorder"),
    ("F32.9", "Major depressive disorder, single episode"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("N39.0", "Urinary tract infection"),
    ("E03.9", "Hypothyroidism, unspecified"),
    ("R51", "Headache"),
    ("J02.9", "Acute pharyngitis, unspecified"),
    ("M17.11", "Primary osteoarthritis, right knee"),
    ("E66.9", "Obesity, unspecified"),
    ("G43.909", "Migraine, unspecified"),
    ("I48.91", "Unspecified atrial fibrillation"),
    ("D64.9", "Anemia, unspecified"),
    ("L20.9", "Atopic dermatitis, unspecified"),
    ("R05", "Cough"),
    ("Z00.00", "General adult medical examination without abnormal findings"),
    ("J30.9", "Allergic rhinitis, unspecified"),
    ("K58.9", "Irritable bowel syndrome without diarrhea"),
    ("G47.00", "Insomnia, unspecified"),
    ("M79.1", "Myalgia"),
    ("B34.9", "Viral infection, unspecified"),
    ("H10.9", "Unspecified conjunctivitis"),
    ("R10.9", "Unspecified abdominal pain"),
    ("I25.10", "Atherosclerotic heart disease of native coronary artery"),
    ("N18.3", "Chronic kidney disease, stage 3"),
]
ITEMS = [
    "Consulting services",
    "Website hosting (annual)",
    "Office chairs",
    "Printer toner",
    "Software licence",
    "Catering for event",
    "Delivery fee",
    "Maintenance contract",
    "Design work",
    "Laptop repair",
    "Cloud storage 1 TB",
    "Training workshop",
    "Translation services",
    "Coffee beans 5 kg",
]


def support_ticket(rng: random.Random, fake: Faker) -> dict[str, Any]:
    category = rng.choice(list(SUMMARIES))
    out: dict[str, Any] = {"category": category, "priority": rng.choice(["low", "medium", "high", "urgent"])}
    if rng.random() < 0.7:
        out["product"] = rng.choice(PRODUCTS)
    out["sentiment"] = rng.choice(["positive", "neutral", "negative"])
    out["summary"] = rng.choice(SUMMARIES[category])
    return out


def billing_codes(rng: random.Random, fake: Faker) -> dict[str, Any]:
    picked = rng.sample(ICD10, rng.choice([1, 1, 2, 2, 3]))
    return {"codes": [{"code": code, "description": text} for code, text in picked]}


def invoice(rng: random.Random, fake: Faker) -> dict[str, Any]:
    issued = date(2025, 1, 1) + timedelta(days=rng.randrange(600))
    lines: list[dict[str, Any]] = [
        {"description": d, "amount": round(rng.uniform(5, 2000), 2)}
        for d in rng.sample(ITEMS, rng.choice([1, 1, 2, 2, 3]))
    ]
    out: dict[str, Any] = {
        "vendor": fake.company(),
        "invoice_number": fake.bothify(rng.choice(["INV-####", "####-??", "A#####", "INV/2025/###"])).upper(),
        "issue_date": issued.isoformat(),
    }
    if rng.random() < 0.7:
        out["due_date"] = (issued + timedelta(days=rng.choice([14, 30, 45, 60]))).isoformat()
    out["currency"] = rng.choice(["USD", "EUR", "GBP", "CHF"])
    out["total"] = round(sum(line["amount"] for line in lines), 2)
    out["line_items"] = lines
    return out


def contact(rng: random.Random, fake: Faker) -> dict[str, Any]:
    first, last = fake.first_name(), fake.last_name()
    out: dict[str, Any] = {"first_name": first, "last_name": last}
    company = fake.company()
    if rng.random() < 0.7:
        domain = company.split()[0].strip(",").lower().replace("'", "") + rng.choice([".com", ".io", ".net"])
        out["email"] = rng.choice([f"{first}.{last}", f"{first[0]}{last}", first]).lower() + "@" + domain
    if rng.random() < 0.6:
        out["phone"] = fake.numerify(rng.choice(["+1 ###-###-####", "(###) ###-####", "+44 20 #### ####"]))
    if rng.random() < 0.7:
        out["company"] = company
    return out


SAMPLERS = {
    "support_ticket": support_ticket,
    "billing_codes": billing_codes,
    "invoice": invoice,
    "contact": contact,
}
