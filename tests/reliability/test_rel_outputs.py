"""RELIABILITY B1-B3 and B5: what the gateway answers when an output or an input is wrong.

Outputs that break the schema, truncations and exact engine-call counts come from FakeEngine (a test
double: vLLM's constrained decoding cannot be made to emit such outputs on demand, and its call log is
exact). Token counting is checked against the real vLLM engine. Each test serves its own forma home
(`private`, see rel_support), so it can promote and re-register freely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_engine import FakeEngine
from rel_support import FORM, FORM_V2, GOOD_FORM, Private, private_home, strong_adapters
from serve_fixtures import Home, engine_state, valid
from test_serve_support import INVOICE, TEXTS

from schemas.prompt import build_messages
from serve.generation import engine_body

pytestmark = pytest.mark.slow  # the registry template compiles grammars; B3's real half uses vLLM


@pytest.fixture
def private(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, home: Home) -> Iterator[Private]:
    """This test's own forma home (registry copy, runs, ledger); its gateways stop after the test."""
    p = private_home(tmp_path, tmp_path_factory, home)
    yield p
    p.close()


def served(private: Private, fake: FakeEngine, **overrides: Any):
    """A gateway in front of `fake` serving form (adapter 0) and invoice (adapter 1)."""
    private.publish("form", 0, "form-r0")
    private.publish("invoice", 1, "invoice-r1")
    return private.gateway(fake.url, **overrides)


def failures(client: httpx.Client, code: str) -> float:
    found = re.search(
        rf'^forma_generation_failures_total{{code="{code}"}} (\S+)$', client.get("/metrics").text, re.M
    )
    return float(found.group(1)) if found else 0.0


def chat(client: httpx.Client, model: str, text: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}]} | extra
    )


VIOLATIONS = [  # (output, pointer, what the detail says, the value that must not be echoed)
    ({**GOOD_FORM, "title": "Residential lease"}, "/title", "breaks maxLength 10", "Residential lease"),
    (
        {**GOOD_FORM, "owner": {"email": "ann@example.org"}},
        "/owner",
        "required: missing name",
        "ann@example.org",
    ),
    ({**GOOD_FORM, "date": "nope"}, "/date", 'breaks format "date"', "nope"),
]


def test_b1_schema_breaking_outputs_are_never_a_200_on_any_route(private: Private) -> None:
    """B1 (FakeEngine: valid JSON that breaks maxLength, an allOf branch's required, format date).
    Each is a 502 output_schema_violation with pointers and keyword-only messages (no document text,
    D5), on /extract, /batch and /chat/completions; the failure counter counts every one; every 200
    is re-validated with Draft202012Validator + FormatChecker."""
    with FakeEngine() as fake, served(private, fake).client() as client:
        for output, pointer, says, value in VIOLATIONS:
            fake.knobs.content = json.dumps(output)
            for response in (
                client.post("/v1/extract/form", json={"text": "Lease signed by Ann on 1 March 2024."}),
                chat(client, "form", "Lease signed by Ann on 1 March 2024."),
            ):
                assert response.status_code == 502, response.text
                error = response.json()["error"]
                assert error["code"] == "output_schema_violation" and "data" not in response.json()
                assert {"pointer": pointer, "message": says} in error["details"]
                assert value not in response.text

        def reply(body: dict[str, Any]) -> tuple[str, str]:
            good = "good" in body["messages"][-1]["content"]
            return json.dumps(GOOD_FORM if good else VIOLATIONS[2][0]), "stop"

        fake.knobs.reply = reply
        batch = client.post("/v1/extract/form/batch", json={"texts": ["a good lease", "a bad lease"]})
        assert batch.status_code == 200
        first, second = batch.json()["results"]
        assert first["error"] is None and valid(FORM, first["data"])
        assert second["data"] is None and second["error"]["code"] == "output_schema_violation"
        one = client.post("/v1/extract/form", json={"text": "a good lease"})
        assert one.status_code == 200 and valid(FORM, one.json()["data"])
        content = chat(client, "form", "a good lease").json()["choices"][0]["message"]["content"]
        assert valid(FORM, json.loads(content))
        assert failures(client, "output_schema_violation") == 2 * len(VIOLATIONS) + 1


@pytest.mark.parametrize(
    ("content", "finish", "code"),
    [
        ('{"title": "Lease", "date": "2024-', "length", "output_truncated"),
        ('{"title": ' + " " * 4000, "length", "output_truncated"),  # runaway whitespace until max_tokens
        ('{"title": "' + "a" * 4000, "length", "output_truncated"),  # runaway string content
        ('{"title": "Lease"' + " " * 50, "stop", "output_invalid_json"),  # stopped early: not repaired
    ],
)
def test_b2_truncated_output_is_an_error_never_repaired_json(
    private: Private, content: str, finish: str, code: str
) -> None:
    """B2 (FakeEngine: scripted finish_reason=length mid-object and runaway output). No guessed JSON."""
    with FakeEngine(content=content, finish_reason=finish) as fake, served(private, fake).client() as client:
        response = client.post("/v1/extract/form", json={"text": "Lease signed by Ann."})
        batch = client.post("/v1/extract/form/batch", json={"texts": ["Lease signed by Ann."]})
        assert failures(client, code) == 2
    assert response.status_code == 502 and response.json()["error"]["code"] == code
    assert "data" not in response.json()
    assert batch.json()["results"][0]["data"] is None and batch.json()["results"][0]["error"]["code"] == code


def test_b2_every_engine_call_carries_an_explicit_max_tokens_within_the_cap(private: Private) -> None:
    """B2 (FakeEngine: its request log shows exactly what the engine was sent): omitted, huge and small
    client values, on every route, become an explicit max_tokens <= the server cap."""
    with (
        FakeEngine(content=json.dumps(GOOD_FORM)) as fake,
        served(private, fake, max_tokens=50).client() as client,
    ):
        assert client.post("/v1/extract/form", json={"text": "one"}).status_code == 200
        assert client.post("/v1/extract/form/batch", json={"texts": ["two", "three"]}).status_code == 200
        assert chat(client, "form", "four").status_code == 200
        assert chat(client, "form", "five", max_tokens=10**6).status_code == 200
        assert chat(client, "form", "six", max_completion_tokens=7).status_code == 200
        assert chat(client, "form", "seven", max_tokens=20).status_code == 200
        assert chat(client, "form", "eight", max_tokens=0).status_code == 422
        assert chat(client, "form", "nine", max_tokens=-5).status_code == 422
    sent = [(r["messages"][-1]["content"], r["max_tokens"]) for r in fake.log.requests]
    assert sorted(sent) == sorted(
        [("one", 50), ("two", 50), ("three", 50), ("four", 50), ("five", 50), ("six", 7), ("seven", 20)]
    )
    assert all("max_completion_tokens" not in r for r in fake.log.requests)


def prompt_tokens(tokenizer: Any, text: str) -> int:
    """The prompt's tokens counted independently of serve.tokens (HF's own tokenize=True path)."""
    messages = build_messages("invoice", INVOICE, text)
    return len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    )


def text_of(tokenizer: Any, tokens: int) -> str:
    """A text whose invoice prompt is exactly `tokens` tokens."""
    words = max(1, tokens - prompt_tokens(tokenizer, "alpha"))
    for _ in range(20):
        text = "alpha " * words + "paid"
        have = prompt_tokens(tokenizer, text)
        if have == tokens:
            return text
        words += tokens - have
    raise AssertionError(f"no text of exactly {tokens} prompt tokens")


@pytest.fixture(scope="module")
def tokenizer(home: Home) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(home.base_model)


def test_b3_prompt_over_the_context_is_refused_with_both_counts_before_the_engine(
    private: Private, home: Home, tokenizer: Any
) -> None:
    """B3 (FakeEngine, for an exact engine-call count): prompt + max_tokens > max_model_len is a 413
    naming both counts, counted with the base model's tokenizer; exactly at the limit it passes."""
    fits, over = text_of(tokenizer, 256 - 64), text_of(tokenizer, 256 - 64 + 1)
    with FakeEngine(content=json.dumps({"vendor": "A", "currency": "EUR", "paid": True})) as fake:
        gw = served(private, fake, base_model=home.base_model, max_model_len=256, max_tokens=64)
        with gw.client() as client:
            assert client.post("/v1/extract/invoice", json={"text": fits}).status_code == 200
            refused = client.post("/v1/extract/invoice", json={"text": over})
            asked_less = chat(client, "invoice", over, max_tokens=63)
            asked_more = chat(client, "invoice", fits, max_tokens=10**6)  # capped to 64: still fits
            batch = client.post("/v1/extract/invoice/batch", json={"texts": [over, fits]}).json()
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_large"
    message = refused.json()["error"]["message"]
    assert "prompt is 193 tokens and max_tokens is 64: 257 tokens" in message and "context of 256" in message
    assert asked_less.status_code == 200 and asked_more.status_code == 200
    assert batch["results"][0]["error"]["code"] == "too_large" and batch["results"][1]["error"] is None
    assert [r["messages"][-1]["content"] for r in fake.log.requests] == [fits, over, fits, fits]


def test_b3_malformed_or_huge_documents_never_reach_the_engine(private: Private, home: Home) -> None:
    """B3 (FakeEngine: its call count must stay 0): a 10 MB body, invalid UTF-8, NUL, a lone surrogate,
    empty, whitespace-only and non-string text are 413/422 on every route, never a 500."""
    json_body = {"content-type": "application/json"}
    with FakeEngine() as fake, served(private, fake, base_model=home.base_model).client() as client:
        statuses = [
            client.post("/v1/extract/invoice", json={"text": "x" * 10_000_000}).status_code,
            client.post(
                "/v1/extract/invoice", content=b'{"text": "Ann \xff\xfe paid"}', headers=json_body
            ).status_code,
            client.post(
                "/v1/extract/invoice", content=b'{"text": "Ann \\ud800 paid"}', headers=json_body
            ).status_code,
            client.post("/v1/extract/invoice", json={"text": "Ann\x00 paid"}).status_code,
            client.post("/v1/extract/invoice", json={"text": ""}).status_code,
            client.post("/v1/extract/invoice", json={"text": " \n\t "}).status_code,
            client.post("/v1/extract/invoice", json={"text": 42}).status_code,
            client.post("/v1/extract/invoice", json={"text": ["a"]}).status_code,
            client.post("/v1/extract/invoice", json={"text": None}).status_code,
            client.post("/v1/extract/invoice", json={}).status_code,
            client.post(
                "/v1/extract/invoice/batch",
                content=json.dumps({"texts": ["fine", "\ud800"]}),
                headers=json_body,
            ).status_code,
            client.post("/v1/extract/invoice/batch", json={"texts": ["fine", 7]}).status_code,
            chat(client, "invoice", "Ann \x00").status_code,
            client.post(
                "/v1/chat/completions",
                content=json.dumps({"model": "invoice", "messages": [{"role": "user", "content": "\udfff"}]}),
                headers=json_body,
            ).status_code,
            client.post(
                "/v1/chat/completions",
                json={"model": "invoice", "messages": [{"role": "user", "content": 5}]},
            ).status_code,
        ]
    assert statuses[0] == 413 and set(statuses[1:]) == {422}
    assert fake.chat_calls == 0


def test_b3_local_token_count_equals_the_real_engines(
    private: Private, engine_url: str, tokenizer: Any
) -> None:
    """B3 against the real vLLM engine, with --engine-url and no base model configured: the gateway takes
    the tokenizer and max_model_len the engine reports. Its count of a served prompt is the engine's
    prompt_tokens; at max_tokens 64, a prompt one token over max_model_len - 64 is refused before the
    engine, and the engine itself counts max_model_len - 64 for the prompt one token shorter (so the
    boundary is exact; vLLM 0.32 itself takes prompt + max_tokens over its context and stops there)."""
    private.publish("invoice", 1, "invoice-r1")
    max_model_len = httpx.get(engine_url + "/v1/models").json()["data"][0]["max_model_len"]
    fits, over = text_of(tokenizer, max_model_len - 64), text_of(tokenizer, max_model_len - 63)
    gw = private.gateway(engine_url, max_tokens=64)
    with gw.client() as client:
        short = client.post("/v1/extract/invoice", json={"text": TEXTS[0]})
        finished = engine_state(engine_url)[1]
        refused = client.post("/v1/extract/invoice", json={"text": over})
        assert engine_state(engine_url)[1] == finished  # never sent
    assert short.status_code == 200
    assert short.json()["usage"]["prompt_tokens"] == prompt_tokens(tokenizer, TEXTS[0])
    assert refused.status_code == 413 and f"context of {max_model_len}" in refused.json()["error"]["message"]
    assert f"prompt is {max_model_len - 63} tokens" in refused.json()["error"]["message"]
    binding = gw.app.state.gateway.table.bindings["invoice"]
    direct = httpx.post(engine_url + "/v1/chat/completions", json=engine_body(binding, fits, 1), timeout=300)
    assert direct.json()["usage"]["prompt_tokens"] == max_model_len - 64


def test_b5_unknown_names_are_404_and_never_sent_to_the_engine(private: Private) -> None:
    """B5 (FakeEngine: its log shows every model name the engine was asked for). Unknown schemas, the
    engine's base model name, a release-shaped name that is not live, lookalikes: 404, no engine call."""
    names = [
        "nope",
        "forma-base",
        "invoice-000000000000",
        "Invoice",
        "invoice ",
        "іnvoice",
        "form-r0",
        "a" * 300,
    ]
    with FakeEngine(content=json.dumps(GOOD_FORM)) as fake, served(private, fake).client() as client:
        for name in names:
            assert client.post(f"/v1/extract/{name}", json={"text": "x"}).status_code == 404, name
            assert client.post(f"/v1/extract/{name}/batch", json={"texts": ["x"]}).status_code == 404, name
            assert chat(client, name, "x").status_code == 404, name
        assert fake.chat_calls == 0
        live = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert client.post("/v1/extract/form", json={"text": "x"}).status_code == 200
    assert {r["model"] for r in fake.log.requests} <= live
    assert {load["lora_name"] for load in fake.log.loads} == live


def test_b5_release_trained_on_an_older_schema_version_is_refused_not_served(private: Private) -> None:
    """B5 (FakeEngine, exact call log): the registry moves form to v2 while its live release learned v1.
    Requests get 422 schema_version_mismatch naming both versions (no fallback to the base model or to
    a stale schema); a gateway started in that state refuses the release at bind time; promoting a run
    trained on v2 serves again."""
    from schemas.register import register

    def no_compile(schema: dict[str, Any]) -> Any:
        raise AssertionError("v2 was registered in the template; its report is reused")

    v1, v2 = private.versions["form"], private.versions["form_v2"]
    with FakeEngine(content=json.dumps(GOOD_FORM)) as fake:
        with served(private, fake).client() as client:
            assert client.post("/v1/extract/form", json={"text": "x"}).status_code == 200
            register(private.schemas, "form", FORM_V2, check=no_compile)
            calls = fake.chat_calls
            refused = [
                client.post("/v1/extract/form", json={"text": "x"}),
                client.post("/v1/extract/form/batch", json={"texts": ["x"]}),
                chat(client, "form", "x"),
            ]
            assert fake.chat_calls == calls
        for response in refused:
            assert (
                response.status_code == 422 and response.json()["error"]["code"] == "schema_version_mismatch"
            )
            assert v1 in response.json()["error"]["message"] and v2 in response.json()["error"]["message"]
        with private.gateway(fake.url).client() as client:  # started while the registry is at v2
            report = client.post("/admin/reload").json()
            assert [(r["schema_name"], r["code"]) for r in report["refused"]] == [
                ("form", "schema_version_mismatch")
            ]
            assert client.post("/v1/extract/form", json={"text": "x"}).status_code == 404
            release = private.publish("form", 2, "form-r2-v2", version=v2)
            assert release.release_id in client.post("/admin/reload").json()["loaded"]
            served_now = client.post("/v1/extract/form", json={"text": "x"}).json()
            assert served_now["schema_version"] == v2 and served_now["release"] == release.release_id
    assert all(r["model"] != "forma-base" for r in fake.log.requests)


def test_b4_the_gateway_decodes_greedily_so_a_request_repeats_byte_for_byte(
    private: Private, engine_url: str, tmp_path_factory: pytest.TempPathFactory, home: Home
) -> None:
    """B4 (c), real vLLM: whatever sampling a client asks for (temperature 2, top_p 0.5, a seed), the
    gateway decodes greedily, so one request sent alone three times returns byte-identical content,
    equal to the engine's own greedy run of the same prompt with the same adapter. (B4 (a) and (b),
    equal outputs under concurrency, hold in `--deterministic` mode: test_rel_determinism.py.)"""
    adapter = strong_adapters(tmp_path_factory, home)[0]
    private.publish("invoice", adapter, "invoice-strong")
    gw = private.gateway(engine_url)
    text = TEXTS[1]
    with gw.client() as client:
        replies = [
            chat(client, "invoice", text, temperature=2.0, top_p=0.5, seed=seed, max_tokens=200)
            for seed in (1, 2, 3)
        ]
    contents = [r.json()["choices"][0]["message"]["content"] for r in replies]
    assert all(r.status_code == 200 for r in replies) and len(set(contents)) == 1
    binding = gw.app.state.gateway.table.bindings["invoice"]
    direct = httpx.post(
        engine_url + "/v1/chat/completions", json=engine_body(binding, text, 200), timeout=300
    )
    assert json.loads(direct.json()["choices"][0]["message"]["content"]) == json.loads(contents[0])
    assert valid(INVOICE, json.loads(contents[0]))
