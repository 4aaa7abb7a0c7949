"""Fast unit tests for the gateway's pure parts: engine arguments, request building, output checks,
keys and the access policy, the route inventory and the OpenAPI error documentation."""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from forma.cli import app as cli
from schemas.prompt import build_messages
from serve import auth
from serve.app import create_app
from serve.auth import ApiKey, KeyConfigError, access_policy_error, find_key, load_key_file, parse_env_keys
from serve.engine_args import engine_command, engine_env
from serve.errors import ApiError
from serve.generation import Binding, check_text, engine_body, read_completion
from serve.routes.openai import ChatRequest, check_response_format, user_text
from serve.settings import ServeSettings

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "integer"}},
    "required": ["name"],
    "additionalProperties": False,
}
BINDING = Binding("people", "abc123", "people-0123456789ab", SCHEMA, "Find the person.", "/x/adapter")
KEY = "k" * 20


def settings(tmp_path: Path, **overrides) -> ServeSettings:
    fields = {"schemas_root": tmp_path, "runs_root": tmp_path, "releases_root": tmp_path}
    fields |= {"engine_url": "http://127.0.0.1:9", "api_keys": f"{KEY}=*,admin"}
    return ServeSettings(**(fields | overrides))


def completion(content: str, finish: str = "stop") -> dict:
    return {
        "choices": [{"message": {"content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }


def test_engine_command_binds_loopback_with_lora(tmp_path: Path) -> None:
    cmd = engine_command(settings(tmp_path, max_loras=3, max_cpu_loras=9), Path("/m"), 4321)
    flags = dict(itertools.pairwise(cmd))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "4321" and flags["--model"] == "/m"
    assert "--enable-lora" in cmd
    assert (flags["--max-loras"], flags["--max-cpu-loras"], flags["--max-lora-rank"]) == ("3", "9", "16")
    assert engine_env({"PATH": "/bin"})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"


def test_engine_body_uses_the_shared_prompt_the_schema_and_an_explicit_max_tokens() -> None:
    body = engine_body(BINDING, "Ann, 3", max_tokens=17)
    assert body["model"] == BINDING.release_id
    assert body["messages"] == build_messages("people", SCHEMA, "Ann, 3", "Find the person.")
    assert body["max_tokens"] == 17 and body["temperature"] == 0.0
    assert body["structured_outputs"] == {"json": SCHEMA}
    assert "structured_outputs" not in engine_body(BINDING, "x", 5, constrained=False)


def test_read_completion_returns_valid_data_only() -> None:
    generated = read_completion(completion('{"name":"Ann","n":3}'), SCHEMA)
    assert generated.data == {"name": "Ann", "n": 3}
    assert (generated.prompt_tokens, generated.completion_tokens) == (7, 3)


@pytest.mark.parametrize(
    ("content", "finish", "code"),
    [
        ('{"name":"An', "length", "output_truncated"),
        ("not json", "stop", "output_invalid_json"),
        ('{"name":"Annabel"}', "stop", "output_schema_violation"),
        ('{"n":3}', "stop", "output_schema_violation"),
    ],
)
def test_read_completion_refuses_bad_generations(content: str, finish: str, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        read_completion(completion(content, finish), SCHEMA)
    assert caught.value.status == 502 and caught.value.code == code


def test_schema_violation_names_the_pointer() -> None:
    with pytest.raises(ApiError) as caught:
        read_completion(completion('{"name":"Annabel","n":"x"}'), SCHEMA)
    assert {d.pointer for d in caught.value.details} == {"/name", "/n"}


def test_check_text_limits() -> None:
    check_text("fine", 10)
    for text, status in [("x" * 11, 413), ("  ", 422), ("a\x00b", 422)]:
        with pytest.raises(ApiError) as caught:
            check_text(text, 10)
        assert caught.value.status == status


def test_env_keys_parse_scopes_and_admin() -> None:
    keys = parse_env_keys(f"{KEY}=invoice,contact; {'a' * 16}=*,admin")
    assert keys[0].schemas == ("invoice", "contact") and not keys[0].admin
    assert keys[1].may_use("anything") and keys[1].admin
    with pytest.raises(KeyConfigError, match="entry 1"):
        parse_env_keys("short=*")
    with pytest.raises(KeyConfigError, match="KEY=SCOPE"):
        parse_env_keys("no-scopes-here-at-all")


def test_key_file_errors_name_file_and_pointer(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "a", "key": KEY, "schemas": ["x"]}, {"name": "b", "key": "short"}]))
    with pytest.raises(KeyConfigError, match=r"keys\.json: /1/key"):
        load_key_file(path)


def test_find_key_is_constant_time_and_exact() -> None:
    keys = [ApiKey(name="a", key=KEY, schemas=("*",)), ApiKey(name="b", key="b" * 20)]
    assert find_key(keys, KEY) is keys[0]
    assert find_key(keys, KEY[:-1]) is None and find_key(keys, KEY + "x") is None
    assert "hmac.compare_digest" in inspect.getsource(auth.find_key)
    assert KEY not in repr(keys[0])


def test_access_policy_refuses_open_access_off_loopback() -> None:
    key = [ApiKey(name="a", key=KEY)]
    assert access_policy_error(key, False, "0.0.0.0") is None
    assert access_policy_error([], True, "127.0.0.1") is None
    assert "no API key" in (access_policy_error([], False, "127.0.0.1") or "")
    assert "loopback" in (access_policy_error([], True, "0.0.0.0") or "")
    assert "choose one" in (access_policy_error(key, True, "127.0.0.1") or "")


def test_create_app_refuses_to_exist_without_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="no API key"):
        create_app(settings(tmp_path, api_keys=None))


def test_cli_serve_refuses_without_keys_or_open_off_loopback(forma_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--engine-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "no API key" in result.output
    result = runner.invoke(
        cli, ["serve", "--open", "--host", "0.0.0.0", "--engine-url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 1 and "loopback" in result.output


def test_every_route_requires_a_key_except_health(tmp_path: Path) -> None:
    """RELIABILITY D1: walk the route table; only the allowlist goes without the auth dependency."""
    from serve.deps import authenticate

    public = {"/healthz", "/readyz"}
    for route in create_app(settings(tmp_path)).routes:
        if route.path in public:
            continue
        calls = {d.call for d in _all_dependencies(route.dependant)}  # type: ignore[attr-defined]
        assert authenticate in calls, route.path


def _all_dependencies(dependant):
    for dep in dependant.dependencies:
        yield dep
        yield from _all_dependencies(dep)


def test_openapi_documents_every_error_status(tmp_path: Path) -> None:
    spec = create_app(settings(tmp_path)).openapi()
    extract = spec["paths"]["/v1/extract/{schema}"]["post"]["responses"]
    assert set(extract) == set(
        ["200", "401", "404", "408", "413", "422", "429", "431", "499", "500", "502", "503", "504"]
    )
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert {"401", "403"} <= set(spec["paths"]["/admin/reload"]["post"]["responses"])


def chat(messages: list, **fields) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": messages} | fields)


def test_chat_takes_exactly_one_user_message() -> None:
    assert user_text(chat([{"role": "user", "content": "hello"}]).messages) == "hello"
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]
    assert user_text(chat([{"role": "user", "content": parts}]).messages) == "hi there"
    for messages in [
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "x"}],
        [{"role": "system", "content": "be nice"}],
        [{"role": "user", "content": " "}],
        [{"role": "user", "content": []}],
    ]:
        with pytest.raises(ValidationError):
            chat(messages)


def test_response_format_must_be_the_trained_schema() -> None:
    user = [{"role": "user", "content": "x"}]
    check_response_format(None, BINDING)
    check_response_format(chat(user, response_format={"type": "json_object"}).response_format, BINDING)
    same = dict(reversed(list(SCHEMA.items())))  # key order does not matter
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": same}}
    check_response_format(chat(user, response_format=fmt).response_format, BINDING)
    other = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    with pytest.raises(ApiError) as caught:
        check_response_format(chat(user, response_format=other).response_format, BINDING)
    assert caught.value.status == 409 and caught.value.code == "schema_mismatch"
    with pytest.raises(ValidationError):  # json_schema without its schema, or a loosely typed field
        chat(user, response_format={"type": "json_schema"})
    with pytest.raises(ValidationError):
        chat(user, stream=0)
