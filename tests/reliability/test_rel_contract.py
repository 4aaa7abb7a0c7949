"""RELIABILITY D4, D5, H1: mass assignment and data exposure, errors and logs that leak nothing, and
the API contract fuzzed by schemathesis against the OpenAPI spec the gateway serves.

Gateways run under the uvicorn config `forma serve` uses. The real vLLM engine answers wherever the
property involves it; FakeEngine (named in each docstring) only where the engine must fail on demand
(a 500 carrying a planted secret) or answer hundreds of fuzzed requests in seconds (H1).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngine
from fastapi.routing import APIRoute
from pydantic import BaseModel
from rel_http import KEYS, offline_app, settings_for, valid_reply
from serve_fixtures import ADMIN, CONTACT_ONLY, Gateway, Home, engine_state
from test_serve_support import TEXTS, promote_run
from typer.testing import CliRunner

import serve
from evals.ledger import rollback
from finetune.run import ADAPTER_DIR, ADAPTER_WEIGHTS
from forma.cli import app as cli
from serve.app import create_app
from serve.engine_args import engine_command
from serve.errors import DESCRIPTIONS, TRANSPORT
from serve.settings import ServeSettings, SettingsError

SERVE = Path(serve.__file__).parent
# OWASP API3: fields a caller must never be able to set on a request.
MASS_ASSIGNMENT = {
    "base_model": "/etc/passwd",
    "trust_remote_code": True,
    "output_dir": "/",
    "owner_id": "someone-else",
    "lora_path": "/tmp/evil-adapter",
    "max_lora_rank": 1024,
}
CHAT = {"model": "invoice", "messages": [{"role": "user", "content": TEXTS[0]}]}
BODY_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/extract/invoice": {"text": TEXTS[0]},
    "/v1/extract/invoice/batch": {"texts": TEXTS[:2]},
    "/v1/chat/completions": CHAT,
}
SECRET = "CANARY-SECRET-7f3e9a"
DOC_SECRET = "CANARY-DOC-4b1d"


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model reachable from a type annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models(field.annotation)
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _models(arg)


def test_d4_every_request_model_forbids_extra_fields_and_loose_types() -> None:
    """D4: each request body model (and every model nested in it), the OpenAI-compatible one included,
    has extra="forbid" and strict types; the base model and adapter paths are server settings only."""
    bodies = [r.body_field for r in offline_app().routes if isinstance(r, APIRoute) and r.body_field]
    assert len(bodies) == 3
    for body in bodies:
        for model in _models(body.field_info.annotation):
            assert model.model_config.get("extra") == "forbid", model.__name__
            assert model.model_config.get("strict") is True, model.__name__
            assert not set(model.model_fields) & set(MASS_ASSIGNMENT), model.__name__


# A property name that would serialise a server path, URL or secret.
EXPOSING = re.compile(r"(^|_)(path|paths|dir|file|url|uri|root|key|keys|secret|token)$")


def test_d4_response_schemas_are_closed_and_name_no_paths_urls_or_keys() -> None:
    """D4: in the served OpenAPI spec, every response object schema forbids extra properties (so a
    response-schema check catches any new field) and no property could carry a path, URL or key
    (a Binding's adapter_path is never serialised)."""
    spec = offline_app().openapi()
    for name, schema in spec["components"]["schemas"].items():
        if schema.get("type") != "object" or name in {"HTTPValidationError", "ValidationError"}:
            continue
        assert schema.get("additionalProperties") is False, name
        for prop in schema.get("properties", {}):
            assert not EXPOSING.search(prop), f"{name}.{prop}"
            assert prop not in MASS_ASSIGNMENT, f"{name}.{prop}"
    text = json.dumps(spec)
    assert "adapter_path" not in text and "run_dir" not in text


@pytest.mark.slow
def test_d4_extra_fields_are_422_on_every_body_route_and_reach_nothing(home: Home, engine_url: str) -> None:
    """D4: each mass-assignment field, at the top level or inside a nested object (a chat message,
    the response_format), answers 422 invalid_request with the field's pointer, and the engine is
    never asked; the same bodies without it are accepted."""
    finished = engine_state(engine_url)[1]
    with Gateway(settings_for(home, engine_url)) as gw, gw.client() as client:
        for path, body in BODY_ROUTES.items():
            for field, value in MASS_ASSIGNMENT.items():
                response = client.post(path, json=body | {field: value})
                assert response.status_code == 422, (path, field, response.text)
                error = response.json()["error"]
                assert error["code"] == "invalid_request"
                assert f"/{field}" in [d["pointer"] for d in error["details"]], (path, field)
        nested = [
            CHAT | {"messages": [{"role": "user", "content": "x", "lora_path": "/tmp/x"}]},
            CHAT | {"response_format": {"type": "json_object", "base_model": "/etc/passwd"}},
            CHAT | {"max_tokens": "5"},  # strict: a string is not an integer
            CHAT | {"stream": 0},
        ]
        for body in nested:
            assert client.post("/v1/chat/completions", json=body).status_code == 422, body
        assert engine_state(engine_url)[1] == finished
        assert client.post("/v1/extract/invoice", json=BODY_ROUTES["/v1/extract/invoice"]).status_code == 200


@pytest.mark.slow
def test_d4_openai_sdk_works_and_its_extra_body_is_refused(home: Home, engine_url: str) -> None:
    """D4: extra="forbid" on the chat body leaves the openai SDK working with its usual parameters,
    while `extra_body` fields are refused (422)."""
    import openai

    with Gateway(settings_for(home, engine_url)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN, max_retries=0)
        messages: Any = [{"role": "user", "content": TEXTS[1]}]
        reply = client.chat.completions.create(
            model="invoice",
            messages=messages,
            temperature=0,
            top_p=1,
            seed=7,
            user="u1",
            max_completion_tokens=200,
        )
        assert reply.choices[0].message.content and reply.model.startswith("invoice-")
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(
                model="invoice", messages=messages, extra_body={"lora_path": "/tmp/x"}
            )


def _exposed(text: str, home: Home, engine_url: str, gw: Any) -> list[str]:
    """Which server-side secrets or locations appear in `text`."""
    state = gw.app.state.gateway
    secrets = [ADMIN, CONTACT_ONLY, engine_url, engine_url.split("//")[1], str(home.root), "/tmp/"]
    secrets += [b.adapter_path for b in state.table.bindings.values()]
    return [s for s in secrets if s in text]


@pytest.mark.slow
def test_d4_no_response_carries_a_path_a_key_or_an_internal_url(home: Home, engine_url: str) -> None:
    """D4: every route's answers, successes and errors (404, 422, 413, 401, 403, a refused release's
    404 and the admin reload report naming it), are free of filesystem paths, API keys and the
    engine's URL. The refused release (its adapter file removed) is rolled back afterwards."""
    run = home.run("contact", 4, "contact-r4-no-weights")
    (run / ADAPTER_DIR / ADAPTER_WEIGHTS).unlink()  # a release the gateway must refuse, naming the file
    promote_run(home.releases, run)
    try:
        with (
            Gateway(settings_for(home, engine_url)) as gw,
            gw.client() as admin,
            gw.client(CONTACT_ONLY) as scoped,
            gw.client(None) as anonymous,
        ):
            answers = [
                admin.get("/v1/models"),
                admin.get("/v1/schemas"),
                admin.get("/openapi.json"),
                admin.get("/metrics"),
                admin.post("/admin/reload"),
                admin.post("/v1/extract/invoice", json={"text": TEXTS[0]}),
                admin.post("/v1/extract/invoice/batch", json={"texts": TEXTS[:2]}),
                admin.post("/v1/chat/completions", json=CHAT),
                admin.post("/v1/extract/nosuch", json={"text": "x"}),
                admin.post("/v1/extract/invoice", json={"text": 5}),
                admin.post("/v1/extract/invoice", json={"text": "x" * 30_000}),
                admin.get("/nowhere"),
                anonymous.get("/v1/models"),
                scoped.post("/admin/reload"),
                scoped.post("/v1/extract/contact", json={"text": "x"}),  # the refused release
            ]
            report = answers[4].json()
            assert [r["schema_name"] for r in report["refused"]] == ["contact"]  # it was refused
            assert ADAPTER_WEIGHTS in report["refused"][0]["reason"]  # named, without its folder
            for response in answers:
                text = response.text + json.dumps(dict(response.headers))
                where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
                assert _exposed(text, home, engine_url, gw) == [], where
    finally:
        rollback(home.releases, "contact")


@pytest.mark.slow
def test_d5_engine_500_with_a_secret_gives_code_and_request_id_only(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """D5: FakeEngine (a 500 carrying a planted secret, path and internal URL cannot be caused in vLLM
    on demand) fails every generation. The answer carries a code and the request id only; neither it
    nor the INFO logs hold the secret, the engine URL, the document text or the key."""
    message = f"{SECRET} in /srv/engine/secret.py via http://10.1.2.3:9000/internal"
    with FakeEngine(status=500, error_message=message) as fake:
        with (
            caplog.at_level("INFO", logger="forma.serve"),
            Gateway(settings_for(home, fake.url)) as gw,
            gw.client() as client,
        ):
            response = client.post(
                "/v1/extract/invoice",
                json={"text": f"{DOC_SECRET} paid 5 EUR"},
                headers={"X-Request-ID": "r-1"},
            )
        assert fake.chat_calls == 1  # the fault did happen
    assert response.status_code == 503
    error = response.json()["error"]
    assert set(error) == {"code", "message", "request_id", "details"} and error["code"] == "unavailable"
    assert error["request_id"] == response.headers["x-request-id"] == "r-1"
    leaks = [SECRET, "/srv/", "10.1.2.3", fake.url, DOC_SECRET, ADMIN, "Traceback"]
    assert [s for s in leaks if s in response.text] == []
    logged = _log_text(caplog)
    assert '"engine_error"' in logged  # the failure is logged ...
    assert [s for s in leaks if s in logged] == []  # ... without what it said


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    records = [r for r in caplog.records if r.name == "forma.serve" and r.levelname != "DEBUG"]
    return "\n".join(json.dumps({"msg": r.getMessage(), **getattr(r, "fields", {})}) for r in records)


@pytest.mark.slow
def test_d5_an_unexpected_exception_is_a_bare_500_with_the_request_id(
    home: Home,
    engine_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:
    """D5: a bug (an exception injected into the extract route, its message holding a secret and a
    path) answers 500 `internal` with the request id: no stack trace, no message, no path, in the
    body or on stderr; the INFO log names the exception type and where, not what it said."""

    def broken(text: str, max_chars: int) -> None:
        raise RuntimeError(f"{SECRET} while reading /srv/forma/secret.py")

    monkeypatch.setattr("serve.routes.extract.check_text", broken)
    with (
        caplog.at_level("INFO", logger="forma.serve"),
        Gateway(settings_for(home, engine_url)) as gw,
        gw.client() as client,
    ):
        response = client.post("/v1/extract/invoice", json={"text": f"{DOC_SECRET} 5 EUR"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal",
            "message": "unexpected server error; quote the request id when reporting it",
            "request_id": response.headers["x-request-id"],
            "details": [],
        }
    }
    assert 'forma_requests_total{route="/v1/extract/{schema}",status="500"} 1.0' in metrics
    logged, printed = _log_text(caplog), capfd.readouterr()
    assert '"unhandled_error"' in logged and "RuntimeError" in logged
    for text in [response.text, logged, printed.out + printed.err]:
        assert [s for s in [SECRET, "/srv/forma", DOC_SECRET, ADMIN, "Traceback"] if s in text] == []


@pytest.mark.slow
def test_d5_documents_with_secrets_stay_out_of_info_logs(
    home: Home, engine_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """D5: a document holding a secret is extracted (real engine); the INFO logs carry the request
    (route, status, request id) but not the text or the key. With --log-text the same capture does
    hold the text, so the check can fail."""
    document = f"Invoice from {DOC_SECRET} Tools, total 120 EUR, paid."
    for log_text in (False, True):
        caplog.clear()
        with (
            caplog.at_level("INFO", logger="forma.serve"),
            Gateway(settings_for(home, engine_url, log_text=log_text)) as gw,
            gw.client() as client,
        ):
            assert client.post("/v1/extract/invoice", json={"text": document}).status_code == 200
        logged = _log_text(caplog)
        assert '"/v1/extract/invoice"' in logged and ADMIN not in logged
        assert (DOC_SECRET in logged) is log_text


@pytest.mark.slow
def test_d5_the_engine_log_holds_no_document_text(home: Home, engine_url: str, tmp_path_factory) -> None:
    """D5: the session's vLLM engine (started with forma's own command line, which never turns on
    request logging) writes nothing of a document to its log."""
    logs = list(tmp_path_factory.getbasetemp().glob("engine*/engine.log"))
    if not logs:
        pytest.skip("the session reuses an engine (FORMA_TEST_ENGINE_URL) whose log this test cannot see")
    assert not any(
        "log-requests" in arg for arg in engine_command(settings_for(home, engine_url), Path("/m"), 1)
    )
    document = f"Invoice from {DOC_SECRET} Tools, total 120 EUR, paid."
    with Gateway(settings_for(home, engine_url)) as gw, gw.client() as client:
        assert client.post("/v1/extract/invoice", json={"text": document}).status_code == 200
    text = logs[0].read_text(errors="replace")
    assert "vllm" in text.lower()  # the engine's own log, written as it ran
    assert DOC_SECRET not in text


def test_d5_log_level_is_checked_at_startup(tmp_path: Path) -> None:
    """D5: debug logging may write documents (engine and exception messages), so the gateway refuses
    to start at debug unless --log-text says so; the CLI says how to fix it."""
    fields: dict[str, Any] = {"schemas_root": tmp_path, "runs_root": tmp_path, "releases_root": tmp_path}
    fields |= {"engine_url": "http://127.0.0.1:9", "api_keys": KEYS}
    with pytest.raises(SettingsError, match="--log-text"):
        create_app(ServeSettings(**fields, log_level="debug"))
    create_app(ServeSettings(**fields, log_level="debug", log_text=True))
    create_app(ServeSettings(**fields, log_level="warning"))
    result = CliRunner().invoke(
        cli, ["serve", "--open", "--engine-url", "http://127.0.0.1:9", "--log-level", "debug"]
    )
    assert result.exit_code == 1 and "--log-text" in result.output


def _statuses_raised() -> set[int]:
    """Every status literal serve/ answers with: ApiError(...) and send_error(...) calls."""
    found = set()
    for path in SERVE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in {
                "ApiError",
                "send_error",
            }:
                found |= {
                    a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, int)
                }
    return found


def test_h1_every_status_the_server_sends_is_documented() -> None:
    """H1: each status serve/ answers with has a description, every route documents the transport
    statuses (408, 413, 431, 500) and 401 unless public, and the body routes document 422 and 429."""
    raised = _statuses_raised()
    assert {401, 404, 408, 413, 422, 429, 500, 503, 504} <= raised
    assert raised <= set(DESCRIPTIONS)
    spec = offline_app().openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            documented = {int(s) for s in operation["responses"] if s.isdigit()}
            if path not in {"/healthz", "/readyz"}:
                assert {401, *TRANSPORT} <= documented, (method, path)
            if "requestBody" in operation:
                assert {404, 413, 422, 429, 499, 502, 503, 504} <= documented, (method, path)
    assert "409" in spec["paths"]["/v1/chat/completions"]["post"]["responses"]  # schema_mismatch


@pytest.mark.slow
def test_h1_schemathesis_finds_no_contract_failure(home: Home, tmp_path: Path) -> None:
    """H1: `st run` with every check and all four phases (examples, coverage, fuzzing, stateful over
    the spec's OpenAPI links) against a real gateway, with a valid key, bounded by --max-examples.
    FakeEngine stands in for vLLM (hundreds of extractions in seconds) with schema-valid answers."""
    report = tmp_path / "junit.xml"
    with FakeEngine(reply=valid_reply) as fake, Gateway(settings_for(home, fake.url)) as gw:
        command = [
            str(Path(sys.executable).parent / "st"),
            "run",
            gw.url + "/openapi.json",
            *("--header", f"Authorization: Bearer {ADMIN}"),
            *("--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"),
            *("--max-examples", "25", "--seed", "20261122", "--workers", "1"),
            *("--max-response-time", "2", "--request-timeout", "10"),
            *("--report", "junit", "--report-junit-path", str(report)),
        ]
        # In tmp_path: st keeps a .schemathesis/ cache in its working directory.
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert fake.chat_calls > 0  # the fuzzer got past auth and validation into extraction
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    suites = ET.parse(report).getroot()
    tests = sum(int(s.get("tests", 0)) for s in suites.iter("testsuite"))
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites.iter("testsuite"))
    assert tests >= 9 and failed == 0, output
    assert "Stateful" in output and "API Links" in output, output
