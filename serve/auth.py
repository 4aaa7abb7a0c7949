"""API keys: loaded once at startup, compared in constant time, scoped to schemas, never logged.

A key file is JSON: `[{"name": "billing-app", "key": "...", "schemas": ["invoice"], "admin": false}]`.
`FORMA_API_KEYS` holds `KEY=SCOPE,SCOPE;KEY2=*` where a scope is a schema name, `*` (every schema) or
`admin` (reload, metrics). Only a key's name ever reaches a log line.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.settings import SettingsError

ALL_SCHEMAS = "*"


class ApiKey(BaseModel):
    """One caller: a secret, the schemas it may extract with, and whether it may administer the server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Shown in logs instead of the key.")
    key: str = Field(min_length=16, repr=False, description="The secret; at least 16 characters.")
    schemas: tuple[str, ...] = Field(default=(), description="Schema names, or '*' for all.")
    admin: bool = Field(default=False, description="May call /admin/reload and /metrics.")

    def may_use(self, schema_name: str) -> bool:
        return ALL_SCHEMAS in self.schemas or schema_name in self.schemas


OPEN_ACCESS = ApiKey(name="open-access", key="-" * 16, schemas=(ALL_SCHEMAS,), admin=True)


class KeyConfigError(SettingsError):
    """A keys file or FORMA_API_KEYS value that cannot be used, with where and how to fix it."""


def parse_env_keys(value: str) -> list[ApiKey]:
    keys = []
    for index, entry in enumerate(part.strip() for part in value.split(";")):
        if not entry:
            continue
        secret, sep, scopes = entry.partition("=")
        names = [s.strip() for s in scopes.split(",") if s.strip()]
        if not sep or not names:
            raise KeyConfigError(f"FORMA_API_KEYS entry {index + 1}: expected KEY=SCOPE[,SCOPE...]")
        keys.append(_key(f"env-{index + 1}", secret.strip(), names, f"FORMA_API_KEYS entry {index + 1}"))
    return keys


def _key(name: str, secret: str, scopes: list[str], where: str) -> ApiKey:
    try:
        return ApiKey(
            name=name, key=secret, schemas=tuple(s for s in scopes if s != "admin"), admin="admin" in scopes
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = "/".join(str(p) for p in first["loc"])
        raise KeyConfigError(
            f"{where}: /{field}: {first['msg']} (use a random key of 16+ characters)"
        ) from None


def load_key_file(path: Path) -> list[ApiKey]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KeyConfigError(f"{path}: not a readable JSON list of keys ({err})") from None
    if not isinstance(entries, list):
        raise KeyConfigError(f"{path}: expected a JSON list of {{name, key, schemas, admin}} objects")
    keys = []
    for index, entry in enumerate(entries):
        try:
            keys.append(ApiKey.model_validate(entry))
        except ValidationError as err:
            first = err.errors()[0]
            pointer = "/" + "/".join(str(p) for p in (index, *first["loc"]))
            raise KeyConfigError(f"{path}: {pointer}: {first['msg']}") from None
    return keys


def load_keys(key_file: Path | None, env_value: str | None) -> list[ApiKey]:
    keys = load_key_file(key_file) if key_file else []
    return keys + (parse_env_keys(env_value) if env_value else [])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_policy_error(keys: list[ApiKey], open_access: bool, host: str) -> str | None:
    """Why the server must not start with these keys on this host, or None when it may."""
    if keys and open_access:
        return "keys are configured and open access was asked for: choose one"
    if not keys and not open_access:
        return "no API key configured: set FORMA_API_KEYS or --keys-file, or pass --open on a loopback host"
    if open_access and not is_loopback(host):
        return f"--open runs without keys and is only allowed on loopback, not on host {host!r}"
    return None


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The key matching `presented`, comparing against every key so timing says nothing about which."""
    found = None
    for key in keys:
        if hmac.compare_digest(key.key.encode(), presented.encode()):
            found = key
    return found
