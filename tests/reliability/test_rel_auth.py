"""RELIABILITY D1-D3: authentication on every route, Host/path confusion, scope isolation (BOLA/BFLA).

forma's only tenants are API-key scopes (schema names, '*', 'admin') and its only HTTP objects are
schemas/releases (no job or schema-writing API), so D3 is: a key scoped to schema A asks for schema B
by every id-bearing route, and a non-admin key calls the admin functions. Gateways run under the
uvicorn config `forma serve` uses, in front of the real vLLM engine.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import starlette
from fastapi.routing import APIRoute
from packaging.version import Version
from rel_http import KEYS, offline_app, raw_exchange, settings_for
from serve_fixtures import ADMIN, CONTACT_ONLY, Gateway, Home, engine_state
from test_serve_support import TEXTS

import serve
from serve import auth
from serve.deps import authenticate

PUBLIC = {"/healthz", "/readyz"}
SERVE = Path(serve.__file__).parent
# A request body each body-taking route accepts, so auth is tried with well-formed requests too.
BODIES: dict[str, dict[str, Any]] = {
    "/v1/extract/{schema}": {"text": TEXTS[0]},
    "/v1/extract/{schema}/batch": {"texts": TEXTS[:2]},
    "/v1/chat/completions": {"model": "invoice", "messages": [{"role": "user", "content": TEXTS[0]}]},
}
REVOKED = "revoked-key-0123456789abcdef"


def guarded_routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path) of every route not on the public allowlist, path parameters filled in."""
    for route in app.routes:
        if route.path in PUBLIC:
            continue
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            yield method, route.path.replace("{schema}", "invoice")


def _dependencies(dependant: Any) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)


def test_d1_route_inventory_every_route_authenticates_or_is_allowlisted() -> None:
    """D1: walk the route table: each route depends on `authenticate` or is /healthz, /readyz. The
    spec is behind a key too, and there are no browser docs pages (they would load it without one)."""
    app = offline_app()
    paths = {route.path for route in app.routes}
    assert {"/docs", "/redoc", "/docs/oauth2-redirect"}.isdisjoint(paths)
    assert "/openapi.json" in paths and app.openapi_url is None  # served by routes/reference.py
    for route in app.routes:
        assert isinstance(route, APIRoute), f"{route.path}: not a FastAPI route, so no dependency check"
        calls = {dep.call for dep in _dependencies(route.dependant)}
        assert (authenticate in calls) != (route.path in PUBLIC), route.path


def test_d1_keys_are_compared_in_constant_time_only() -> None:
    """D1: the key lookup uses hmac.compare_digest, and no code in serve/ compares a secret with ==."""
    assert "hmac.compare_digest" in inspect.getsource(auth.find_key)
    # ApiKey.key (the secret) and the names the presented key travels under in serve/deps.py.
    secret_attributes = {"key", "credentials"}
    secret_names = {"presented", "credentials", "header_key", "bearer_key", "secret"}
    for path in SERVE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare) or all(
                isinstance(op, ast.Is | ast.IsNot) for op in node.ops
            ):
                continue  # `key is None` compares no secret
            for operand in [node.left, *node.comparators]:
                secret = (isinstance(operand, ast.Attribute) and operand.attr in secret_attributes) or (
                    isinstance(operand, ast.Name) and operand.id in secret_names
                )
                assert not secret, (
                    f"{path.name}:{node.lineno} compares a key with {type(node.ops[0]).__name__}"
                )


BAD_CREDENTIALS: list[tuple[str, dict[str, str]]] = [
    ("none", {}),
    ("wrong key, same length", {"Authorization": "Bearer " + "x" * len(ADMIN)}),
    ("revoked key", {"Authorization": f"Bearer {REVOKED}"}),
    ("one char short", {"Authorization": f"Bearer {ADMIN[:-1]}"}),
    ("one char long", {"Authorization": f"Bearer {ADMIN}x"}),
    ("16-char prefix", {"Authorization": f"Bearer {ADMIN[:16]}"}),
    ("other case", {"Authorization": f"Bearer {ADMIN.upper()}"}),
    ("bearer without a key", {"Authorization": "Bearer"}),
    ("basic scheme", {"Authorization": f"Basic {ADMIN}"}),
    ("wrong X-API-Key", {"X-API-Key": "y" * len(ADMIN)}),
]


@pytest.mark.slow
def test_d1_every_guarded_route_answers_401_to_missing_wrong_revoked_or_odd_keys(
    home: Home, engine_url: str
) -> None:
    """D1: over real HTTP, every non-allowlisted route and method answers 401 (with WWW-Authenticate)
    to each bad credential, with a well-formed body and with a malformed one, and the engine is never
    asked. A revoked key is one that worked until the gateway restarted without it."""
    revocable = settings_for(home, engine_url, api_keys=f"{KEYS};{REVOKED}=*")
    with Gateway(revocable) as before, before.client(REVOKED) as client:
        assert client.get("/v1/models").status_code == 200
    finished = engine_state(engine_url)[1]
    with Gateway(settings_for(home, engine_url)) as gw, gw.client(key=None) as client:
        routes = list(guarded_routes(gw.app))
        assert len(routes) >= 7
        for method, path in routes:
            template = path.replace("invoice", "{schema}")
            for label, headers in BAD_CREDENTIALS:
                for body in [BODIES.get(template), b"{not json"]:  # a malformed body too: still 401
                    kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
                    if method == "GET" or body is None:
                        kwargs = {}
                    # A key in the query string is not a credential either.
                    response = client.request(
                        method, path, headers=headers, params={"api_key": ADMIN}, **kwargs
                    )
                    where = f"{method} {path} with {label}"
                    assert response.status_code == 401, f"{where}: {response.status_code} {response.text}"
                    assert response.json()["error"]["code"] == "unauthorized", where
                    assert response.headers["www-authenticate"] == "Bearer", where
        for path in PUBLIC:
            assert client.get(path).status_code == 200
    assert engine_state(engine_url)[1] == finished


@pytest.mark.slow
def test_d2_host_header_and_path_confusion_never_bypass_auth(home: Home, engine_url: str) -> None:
    """D2 (CVE-2026-48746): raw-socket POSTs without a key, with Host headers holding / ? # @ and
    request targets that mention a public route, on the pinned starlette/uvicorn: the extract route
    answers 401; targets that are not it answer 404/405, never 2xx or a redirect built from Host."""
    body = b'{"text": "Invoice from ACME, 10 EUR, paid."}'

    def post(target: bytes, host: bytes, extra: bytes = b"") -> Any:
        head = (
            b"POST " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n" % len(body) + extra + b"\r\n"
        )
        return raw_exchange(gw.port, head, body)

    hosts = [
        b"x/?",
        b"x?",
        b"x#",
        b"x@y",
        b"a@127.0.0.1",
        b"127.0.0.1/healthz?",
        b"x/healthz#",
        b"x/../readyz",
    ]
    with Gateway(settings_for(home, engine_url)) as gw:
        for host in hosts:
            reply = post(b"/v1/extract/invoice", host)
            assert reply.status == 401, (host, reply)
        for header in [
            b"X-Original-URL: /healthz\r\n",
            b"X-Rewrite-URL: /healthz\r\n",
            b"X-Forwarded-Prefix: /healthz\r\n",
        ]:
            assert post(b"/v1/extract/invoice", b"x", header).status == 401, header
        targets = {
            b"/v1/extract/invoice?/healthz": {401},
            b"/v1/extract/invoice#/healthz": {401},
            b"/v1/%65xtract/invoice": {401},
            b"http://x/healthz": {405},
            b"/healthz/../v1/extract/invoice": {404},
            b"/healthz%2F..%2Fv1/extract/invoice": {404},
            b"//v1/extract/invoice": {404},
            b"/v1/extract/invoice/": {404},  # no 307: its Location would echo the Host header
        }
        for target, expected in targets.items():
            reply = post(target, b"evil.example")
            assert reply.status in expected, (target, reply)
            assert b"evil.example" not in reply.head
    for module in (auth, serve.deps):
        source = inspect.getsource(module)
        assert "request.url" not in source and "URL(scope" not in source, module.__name__
    assert Version(starlette.__version__) >= Version("1.10")  # the Host-header bypass is fixed there


def _ledger_digest(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _engine_models(url: str) -> list[str]:
    return sorted(m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"])


@pytest.mark.slow
def test_d3_out_of_scope_schema_is_indistinguishable_from_unknown_and_admin_needs_scope(
    home: Home, engine_url: str
) -> None:
    """D3: a key scoped to `contact` gets 404, the very answer an unknown name gets, for `invoice` on
    every id-bearing route (extract, batch, chat by schema name and by release id); the lists omit it;
    the admin functions answer 403. Ledger, bindings, engine adapters and engine work are unchanged."""
    with Gateway(settings_for(home, engine_url)) as gw:
        state = gw.app.state.gateway
        invoice_release = state.table.bindings["invoice"].release_id
        before = (_ledger_digest(home.releases), dict(state.table.bindings), _engine_models(engine_url))
        finished = engine_state(engine_url)[1]
        with gw.client(CONTACT_ONLY) as scoped:

            def ask(name: str) -> list[httpx.Response]:
                chat = {"model": name, "messages": [{"role": "user", "content": TEXTS[0]}]}
                return [
                    scoped.post(f"/v1/extract/{name}", json={"text": TEXTS[0]}),
                    scoped.post(f"/v1/extract/{name}/batch", json={"texts": TEXTS[:2]}),
                    scoped.post("/v1/chat/completions", json=chat),
                ]

            for name in ["invoice", invoice_release]:
                for hidden, unknown in zip(ask(name), ask("nosuch-schema"), strict=True):
                    assert hidden.status_code == unknown.status_code == 404, hidden.text
                    shape = hidden.json()["error"] | {"request_id": None}
                    shape["message"] = shape["message"].replace(name, "NAME")
                    other = unknown.json()["error"] | {"request_id": None}
                    assert shape == other | {"message": other["message"].replace("nosuch-schema", "NAME")}
            assert [m["id"].split("-")[0] for m in scoped.get("/v1/models").json()["data"]] == ["contact"]
            assert [s["name"] for s in scoped.get("/v1/schemas").json()["data"]] == ["contact"]
            for method, path in [("POST", "/admin/reload"), ("GET", "/metrics")]:
                denied = scoped.request(method, path)
                assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden", path
            assert engine_state(engine_url)[1] == finished  # nothing reached the engine
            served = scoped.post("/v1/extract/contact", json={"text": "Mary Major, the buyer, called."})
            assert served.status_code == 200, served.text  # the key works for its own schema
        after = (_ledger_digest(home.releases), dict(state.table.bindings), _engine_models(engine_url))
        assert after == before
