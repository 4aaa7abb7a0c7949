"""The gateway over real HTTP in front of a real vLLM engine (started once for the session).

Adapters are real PEFT LoRAs (random non-zero lora_B, see test_serve_support), schemas are registered
through the real registry, releases promoted through the real ledger. Each test starts its own gateway
(uvicorn on a free loopback port) with the limits it needs, all sharing the one engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from serve_fixtures import ADMIN, CONTACT, CONTACT_ONLY, Home, assert_aborted, engine_state, valid
from test_serve_support import INVOICE, TEXTS, promote_run

from evals.ledger import rollback
from finetune.run import ADAPTER_DIR, ADAPTER_WEIGHTS

pytestmark = pytest.mark.slow


def test_extract_returns_schema_valid_data_from_the_live_release(gateway, home: Home) -> None:
    gw = gateway()
    with gw.client() as client:
        response = client.post(
            "/v1/extract/invoice", json={"text": TEXTS[0]}, headers={"X-Request-ID": "req-1"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert valid(INVOICE, body["data"])
    assert body["schema"] == "invoice" and body["schema_version"] == home.versions["invoice"]
    assert body["release"].startswith("invoice-") and len(body["release"]) == len("invoice-") + 12
    assert body["usage"]["completion_tokens"] > 0 and body["latency_ms"] > 0
    assert response.headers["x-request-id"] == "req-1"


def test_batch_decodes_every_text(gateway) -> None:
    with gateway().client() as client:
        response = client.post("/v1/extract/invoice/batch", json={"texts": TEXTS[:3]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert all(r["error"] is None and valid(INVOICE, r["data"]) for r in results)


def test_openai_sdk_works_unchanged(gateway) -> None:
    import openai

    gw = gateway()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN, max_retries=0)
    models = {m.id for m in client.models.list().data}
    invoice = next(m for m in models if m.startswith("invoice-"))
    assert any(m.startswith("contact-") for m in models)
    fmt = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": INVOICE, "strict": True}}
    reply = client.chat.completions.create(
        model=invoice, messages=[{"role": "user", "content": TEXTS[1]}], response_format=fmt, max_tokens=200
    )
    assert reply.model == invoice and reply.choices[0].finish_reason == "stop"
    assert valid(INVOICE, json.loads(reply.choices[0].message.content or ""))
    other = {"type": "json_schema", "json_schema": {"name": "x", "schema": CONTACT}}
    with pytest.raises(openai.ConflictError):  # 409: not the schema this release was trained on
        client.chat.completions.create(
            model=invoice, messages=[{"role": "user", "content": "x"}], response_format=other
        )
    scoped = openai.OpenAI(base_url=gw.url + "/v1", api_key=CONTACT_ONLY, max_retries=0)
    assert [m.id.split("-")[0] for m in scoped.models.list().data] == ["contact"]
    with pytest.raises(openai.NotFoundError):
        scoped.chat.completions.create(model=invoice, messages=[{"role": "user", "content": "x"}])


def test_keys_scopes_and_public_health(gateway) -> None:
    gw = gateway()
    with gw.client(key=None) as anonymous, gw.client(key="wrong-key-0123456789abc") as wrong:
        assert anonymous.post("/v1/extract/invoice", json={"text": "x"}).status_code == 401
        assert wrong.post("/v1/extract/invoice", json={"text": "x"}).status_code == 401
        assert anonymous.get("/v1/schemas").status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").json()["ready"] is True
    with gw.client(key=CONTACT_ONLY) as scoped:
        hidden = scoped.post("/v1/extract/invoice", json={"text": "x"})  # out of scope looks unknown
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
        assert scoped.post("/admin/reload").status_code == 403
        assert scoped.get("/metrics").status_code == 403
        assert [s["name"] for s in scoped.get("/v1/schemas").json()["data"]] == ["contact"]
    with gw.client() as admin:
        assert admin.post("/v1/extract/nope", json={"text": "x"}).status_code == 404
        assert admin.get("/v1/schemas").json()["data"][1]["json_schema"] == INVOICE


def test_size_limits_answer_413_before_the_engine(gateway, engine_url: str) -> None:
    gw = gateway(max_body_bytes=2048, max_text_chars=100, max_batch=2)
    with gw.client() as client:
        assert client.post("/v1/extract/invoice", json={"text": "x" * 5000}).status_code == 413
        chunked = (part for part in [b'{"text": "', b"x" * 3000, b'"}'])  # no Content-Length to trust
        streamed = client.post(
            "/v1/extract/invoice", content=chunked, headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "too_large"
        assert client.post("/v1/extract/invoice", json={"text": "x" * 101}).status_code == 413
        assert client.post("/v1/extract/invoice/batch", json={"texts": ["a", "b", "c"]}).status_code == 413
        empty = client.post("/v1/extract/invoice", json={"text": " "})
        assert empty.status_code == 422 and empty.json()["error"]["request_id"]
        assert client.post("/v1/extract/invoice", json={"text": "x", "extra": 1}).status_code == 422


def test_in_flight_bound_sheds_with_429_and_retry_after(gateway) -> None:
    gw = gateway(max_in_flight=1)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
        ) as c:
            first = asyncio.create_task(c.post("/v1/extract/invoice", json={"text": TEXTS[0]}))
            await asyncio.sleep(0.3)
            second = await c.post("/v1/extract/invoice", json={"text": TEXTS[1]})
            return [await first, second]

    first, second = asyncio.run(burst())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"


def test_truncated_generation_is_an_explicit_error(gateway) -> None:
    with gateway(max_tokens=4).client() as client:
        response = client.post("/v1/extract/invoice", json={"text": TEXTS[0]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "output_truncated"


def test_deadline_gives_504_and_aborts_the_generation(gateway, engine_url: str) -> None:
    gw = gateway(request_timeout_s=0.5)
    finished = engine_state(engine_url)[1]
    with gw.client() as client:
        started = time.monotonic()
        response = client.post("/v1/extract/invoice/batch", json={"texts": TEXTS})
    assert response.status_code == 504 and time.monotonic() - started < 3
    assert response.json()["error"]["code"] == "timeout"
    assert_aborted(engine_url, finished)
    assert gw.app.state.gateway.admission.count == 0


def test_client_disconnect_cancels_the_generation(gateway, engine_url: str) -> None:
    gw = gateway()
    finished = engine_state(engine_url)[1]
    with gw.client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/extract/invoice/batch", json={"texts": TEXTS})
    assert_aborted(engine_url, finished)


def test_promote_and_rollback_switch_without_restart_and_in_flight_finishes(gateway, home: Home) -> None:
    gw = gateway()
    with gw.client() as client:
        before = client.post("/v1/extract/invoice", json={"text": TEXTS[0]}).json()["release"]

        def promote_soon() -> None:
            time.sleep(0.5)
            promote_run(home.releases, home.run("invoice", 2, "invoice-r2"))

        thread = threading.Thread(target=promote_soon)
        thread.start()
        in_flight = client.post("/v1/extract/invoice/batch", json={"texts": TEXTS})
        thread.join()
        assert in_flight.status_code == 200 and in_flight.json()["release"] == before
        report = client.post("/admin/reload").json()
        after = client.post("/v1/extract/invoice", json={"text": TEXTS[0]}).json()["release"]
        assert after != before and after in report["loaded"] + report["unchanged"]
        rollback(home.releases, "invoice")
        deadline = time.monotonic() + 10  # the ledger watcher (0.2 s poll) picks the rollback up
        while (
            gw.app.state.gateway.table.bindings["invoice"].release_id != before
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert client.post("/v1/extract/invoice", json={"text": TEXTS[0]}).json()["release"] == before


def test_adapter_failing_its_hash_is_refused_and_the_old_release_stays(gateway, home: Home) -> None:
    gw = gateway()
    with gw.client() as client:
        live = client.get("/v1/models").json()["data"]
        run = home.run("contact", 3, "contact-r3-tampered")
        weights = run / ADAPTER_DIR / ADAPTER_WEIGHTS
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # changed after training: the manifest's sha256 no longer matches
        weights.write_bytes(bytes(data))
        promote_run(home.releases, run)
        report = client.post("/admin/reload").json()
        assert [r["schema_name"] for r in report["refused"]] == ["contact"]
        assert "sha256" in report["refused"][0]["reason"]
        assert client.get("/v1/models").json()["data"] == live
        served = client.post("/v1/extract/contact", json={"text": "Mary Major, the buyer, called."})
        assert served.status_code == 200 and served.json()["release"] in {m["id"] for m in live}
    rollback(home.releases, "contact")  # leave the shared ledger as the other tests expect it


def test_metrics_and_logs(gateway, caplog: pytest.LogCaptureFixture) -> None:
    canary = "Canary Vendor 4711 paid 3 EUR"
    gw = gateway()
    with caplog.at_level("INFO", logger="forma.serve"), gw.client() as client:
        assert client.post("/v1/extract/invoice", json={"text": canary}).status_code == 200
        metrics = client.get("/metrics").text
    for name in [
        "forma_requests_total",
        "forma_request_latency_seconds_bucket",
        "forma_tokens_total",
        "forma_in_flight_requests",
        "forma_adapter_loads_total",
    ]:
        assert name in metrics
    assert 'forma_requests_total{route="/v1/extract/{schema}",status="200"} 1.0' in metrics
    lines = [r for r in caplog.records if r.name == "forma.serve"]
    assert any(getattr(r, "fields", {}).get("status") == 200 for r in lines)
    logged = caplog.text + " ".join(json.dumps(getattr(r, "fields", {})) for r in lines)
    assert canary not in logged and ADMIN not in logged


def test_release_trained_on_another_base_is_refused(gateway) -> None:
    gw = gateway(base_model_sha256="0" * 64)
    with gw.client() as client:
        assert client.get("/v1/models").json()["data"] == []
        refused = client.post("/admin/reload").json()["refused"]
        assert {r["schema_name"] for r in refused} == {"invoice", "contact"}
        assert all("trained on base" in r["reason"] for r in refused)
        missing = client.post("/v1/extract/invoice", json={"text": "x"})
        assert missing.status_code == 404 and "refused" in missing.json()["error"]["message"]
