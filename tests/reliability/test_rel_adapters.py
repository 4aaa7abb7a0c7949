"""RELIABILITY C1-C4, C6, C7: what a release may point at, what an adapter folder may hold, what the
engine is asked to load, and what the public port exposes.

All against the real vLLM engine (the session's `engine_url`); each test serves its own forma home
(`private`, see rel_support), so it can promote, tamper and roll back freely. Refusals happen in Python
before the engine is asked, which the engine's own model list confirms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from rel_support import (
    Private,
    engine_models,
    engine_processes,
    private_home,
    reseal,
    strong_adapters,
    unique_adapter,
    write_safetensors,
)
from serve_fixtures import ADMIN, CONTACT_ONLY, Home, engine_state, valid
from test_serve_support import INVOICE, TEXTS

from evals import ledger
from evals.inputs import EvalError
from evals.pipeline import EvalPaths
from evals.releasing import promote_run
from finetune.run import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    MANIFEST,
    UnsupportedArtifact,
    load_manifest,
    verified_adapter,
)
from serve.engine_args import engine_command
from serve.generation import Binding, engine_body
from serve.settings import ServeSettings

pytestmark = pytest.mark.slow  # real vLLM engine


@pytest.fixture
def private(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, home: Home) -> Iterator[Private]:
    """This test's own forma home (registry copy, runs, ledger); its gateways stop after the test."""
    p = private_home(tmp_path, tmp_path_factory, home)
    yield p
    p.close()


def release_of(run: Path, **changes: Any) -> ledger.Release:
    """The ledger record `forma releases promote` would write for `run`, with `changes` forged in."""
    m = load_manifest(run)
    assert m.adapter_sha256 is not None
    release = ledger.Release(
        release_id=ledger.release_id(m.schema_name, m.adapter_sha256),
        schema_name=m.schema_name,
        schema_version=m.schema_version,
        run_id=m.run_id,
        run_dir=str(run),
        adapter_sha256=m.adapter_sha256,
        base_model_id=m.base_model.id,
        base_model_sha256=m.base_model.content_sha256,
        prompt_hash=m.prompt_hash,
        gate_passed=True,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return release.model_copy(update=changes)


def refusals(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["schema_name"], r["code"]) for r in report["refused"]]


# --- C1: names and paths ----------------------------------------------------------------------------

_OPENED: list[str] = []
_RECORDING = threading.Event()
_HOOKED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watched = event in ("open", "os.listdir", "os.scandir") and args
    if _RECORDING.is_set() and watched and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every file or folder this process opens or lists meanwhile (sys.addaudithook: open, os.listdir,
    os.scandir), from any thread, the gateway's included. Python's own imports are left out."""
    if not _HOOKED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle unless recording
        _HOOKED.append(True)
    _OPENED.clear()
    _RECORDING.set()
    found: list[str] = []
    try:
        yield found
    finally:
        _RECORDING.clear()
        python = (sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2]))
        found.extend(p for p in _OPENED if not os.path.abspath(p).startswith(python))


def outside_of(paths: list[str], root: Path) -> list[str]:
    top = str(root.resolve())
    return [p for p in paths if not os.path.realpath(p).startswith(top)]


def test_c1_run_folders_outside_the_runs_root_are_refused_and_never_opened(
    private: Private, engine_url: str, tmp_path: Path
) -> None:
    """C1: ledger entries whose run folder escapes the runs root (absolute elsewhere, ../, a symlinked
    run, manifest, adapter folder or weights file) are refused at bind time; an audit hook shows that
    nothing outside the forma home is opened or listed while they are bound; the live release stays."""
    outside = tmp_path / "outside"
    outside.mkdir()
    escaped = shutil.move(private.run("invoice", 2, "invoice-out"), outside / "invoice-out")
    links = {name: private.run("invoice", 3, f"invoice-{name}") for name in ("mlink", "alink", "wlink")}
    (links["mlink"] / MANIFEST).unlink()
    (links["mlink"] / MANIFEST).symlink_to(escaped / MANIFEST)
    shutil.rmtree(links["alink"] / ADAPTER_DIR)
    (links["alink"] / ADAPTER_DIR).symlink_to(escaped / ADAPTER_DIR, target_is_directory=True)
    (links["wlink"] / ADAPTER_DIR / ADAPTER_WEIGHTS).unlink()
    (links["wlink"] / ADAPTER_DIR / ADAPTER_WEIGHTS).symlink_to(escaped / ADAPTER_DIR / ADAPTER_WEIGHTS)
    (private.runs / "invoice-link").symlink_to(escaped, target_is_directory=True)
    cases = {
        "absolute path elsewhere": (release_of(escaped), "outside_root"),
        "relative ../": (release_of(escaped, run_dir="../../outside/invoice-out"), "outside_root"),
        "symlinked run folder": (
            release_of(escaped, run_dir=str(private.runs / "invoice-link")),
            "outside_root",
        ),
        "symlinked manifest": (release_of(escaped, run_dir=str(links["mlink"])), "outside_root"),
        "symlinked adapter/": (release_of(links["alink"]), "unsupported_artifact"),
        "symlinked weights": (release_of(links["wlink"]), "unsupported_artifact"),
    }
    good = private.publish("invoice", 1, "invoice-good")
    with private.gateway(engine_url, ledger_poll_s=3600).client() as client:
        for label, (release, code) in cases.items():
            with recording_opens() as opened:
                ledger.promote(private.releases, release)
                report = client.post("/admin/reload").json()
            assert refusals(report) == [("invoice", code)], label
            assert opened and outside_of(opened, private.root) == [], (
                label,
                outside_of(opened, private.root),
            )
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [good.release_id], label
            ledger.rollback(private.releases, "invoice")
    assert all(r.release_id not in engine_models(engine_url) for r, _ in cases.values())


def test_c1_ledger_names_off_the_allowlist_are_refused(private: Private, engine_url: str) -> None:
    """C1: a ledger line whose run id or schema name is a path (../../etc), a ledger file whose name is
    off the allowlist, a file holding another schema's release: each refused with the file, the line
    and the field; the other schemas keep serving."""
    good = private.publish("invoice", 1, "invoice-good")
    path = private.releases / "invoice.jsonl"
    clean = path.read_text()
    line = json.loads(clean.splitlines()[0])
    forged = [
        ("run_id", "../../etc/passwd"),
        ("schema_name", "../invoice"),
        ("release_id", "invoice-../../x"),
        ("adapter_sha256", "ZZ" * 32),
    ]
    with private.gateway(engine_url, ledger_poll_s=3600).client() as client:
        for field, value in forged:
            bad = {**line, "release": {**line["release"], field: value}}
            path.write_text(clean + json.dumps(bad) + "\n")
            report = client.post("/admin/reload").json()
            assert report["refused"][0]["schema_name"] == "invoice"
            reason = report["refused"][0]["reason"]
            assert "invoice.jsonl:2:" in reason and f"/{field}: String should match pattern" in reason, reason
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [good.release_id]
        path.write_text(clean)
        (private.releases / "Invoice.jsonl").write_text(clean)
        (private.releases / "form.jsonl").write_text(clean)  # an invoice release in form's ledger
        report = client.post("/admin/reload").json()
    assert sorted(r["schema_name"] for r in report["refused"]) == ["Invoice", "form"]
    assert report["unchanged"] == [good.release_id]


HOSTILE = [
    "../../etc",
    "%2e%2e%2f",
    "..%2F..%2Fetc",
    "..%00",
    "%00",
    "a" * 300,
    "іnvoice",
    "invoice%2F..%2F..",
    "..\\..\\etc",
    "~root",
]


def test_c1_hostile_names_in_urls_are_404_or_422_and_touch_no_file(private: Private, engine_url: str) -> None:
    """C1: traversal, encoded traversal, NUL, 300 characters and unicode lookalikes as schema or model
    names: 404/422, and the audit hook sees no file opened or listed while they are answered."""
    private.publish("invoice", 1, "invoice-good")
    with private.gateway(engine_url).client() as client, recording_opens() as opened:
        statuses = set()
        for name in HOSTILE:
            statuses.add(client.post(f"/v1/extract/{name}", json={"text": "x"}).status_code)
            statuses.add(client.post(f"/v1/extract/{name}/batch", json={"texts": ["x"]}).status_code)
            body = {
                "model": name.replace("%2F", "/").replace("%00", "\x00"),
                "messages": [{"role": "user", "content": "x"}],
            }
            statuses.add(client.post("/v1/chat/completions", json=body).status_code)
        for model in ("/etc/passwd", "a/../../b", "../invoice-good"):
            statuses.add(client.post("/v1/chat/completions", json={**body, "model": model}).status_code)
    assert statuses <= {404, 422}, statuses
    assert opened == [], opened


# --- C2: pickles -----------------------------------------------------------------------------------


class Planted:
    """A pickle that writes `sentinel` when loaded (what a malicious adapter_model.bin would do)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.sentinel!r}, 'w').close()",))


def test_c2_pickle_adapters_are_refused_at_promote_and_bind_and_never_loaded(
    private: Private, engine_url: str, tmp_path: Path
) -> None:
    """C2: adapter_model.bin alone, .bin beside .safetensors, or .pt beside it: `forma releases promote`
    refuses the run (unsupported_artifact) and so does the server when a ledger names it anyway; the
    planted pickle never runs (its sentinel never appears) and the engine never sees the adapter."""
    control, sentinel = tmp_path / "control", tmp_path / "sentinel"
    pickle.loads(pickle.dumps(Planted(control)))
    assert control.exists()  # the payload is live: loading it would have written the sentinel
    payload = pickle.dumps(Planted(sentinel))
    runs = {}
    for label, files, keep in [
        ("bin only", ["adapter_model.bin"], False),
        ("bin beside safetensors", ["adapter_model.bin"], True),
        ("pt beside safetensors", ["adapter_model.pt"], True),
    ]:
        run = private.run("form", 0, f"form-{label.replace(' ', '-')}")
        for name in files:
            (run / ADAPTER_DIR / name).write_bytes(payload)
        if not keep:
            (run / ADAPTER_DIR / ADAPTER_WEIGHTS).unlink()
        runs[label] = run
    paths = EvalPaths(registry=private.schemas, runs=private.runs, releases=private.releases)
    for label, run in runs.items():
        with pytest.raises(UnsupportedArtifact, match=r"\.(bin|pt)"):
            verified_adapter(run, load_manifest(run))
        with pytest.raises((UnsupportedArtifact, EvalError)):
            promote_run(paths, run.name)
        assert ledger.live_release(private.releases, "form") is None, label
    private.publish("invoice", 1, "invoice-good")
    with private.gateway(engine_url, ledger_poll_s=3600).client() as client:
        for label, run in runs.items():
            ledger.promote(private.releases, release_of(run))
            report = client.post("/admin/reload").json()
            assert refusals(report) == [("form", "unsupported_artifact")], label
            assert "pickle" in report["refused"][0]["reason"], label
    assert not sentinel.exists()
    assert not {release_of(run).release_id for run in runs.values()} & engine_models(engine_url)


# --- C3: invalid adapter configs while good traffic runs --------------------------------------------


def _edit(**changes: Any):
    def edit(config: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in {**config, **changes}.items() if v != "<drop>"})

    return edit


BAD_CONFIGS = {
    "not JSON": (lambda config: '{"peft_type": "LORA", "r": 8,', "not valid JSON"),
    "r above max_lora_rank": (_edit(r=64), "/r is 64"),
    "bias all": (_edit(bias="all"), "/bias"),
    "use_dora": (_edit(use_dora=True), "/use_dora"),
    "modules_to_save lm_head": (_edit(modules_to_save=["lm_head"]), "/modules_to_save"),
    "target module absent from the base": (
        _edit(target_modules=["q_proj", "v_proj", "wq_proj"]),
        "absent from the base",
    ),
    "another base model": (
        _edit(base_model_name_or_path="meta-llama/Llama-2-7b-hf"),
        "/base_model_name_or_path",
    ),
    "missing peft_type": (_edit(peft_type="<drop>"), "/peft_type"),
}


def test_c3_bad_adapter_configs_are_refused_in_python_while_50_good_requests_run(
    private: Private, engine_url: str, home: Home
) -> None:
    """C3: eight broken adapter_config.json files are refused at bind time (invalid_adapter, naming the
    field) before the engine is asked (no failed load, the engine never lists them), while 50 concurrent
    requests on another adapter all succeed; the engine process is the same one afterwards and a valid
    adapter still loads and serves."""
    good = private.publish("invoice", 0, "invoice-good")
    pids = {p.pid for p in engine_processes(engine_url)}
    gw = private.gateway(engine_url, ledger_poll_s=3600)
    responses: list[httpx.Response] = []
    bad: set[str] = set()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600
        ) as c:
            texts = itertools.islice(itertools.cycle(TEXTS), 50)
            return await asyncio.gather(*(c.post("/v1/extract/invoice", json={"text": t}) for t in texts))

    traffic = threading.Thread(target=lambda: responses.extend(asyncio.run(burst())))
    traffic.start()
    deadline = time.monotonic() + 60
    while engine_state(engine_url)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the good requests are decoding before the first bad load
    with gw.client() as client:
        for index, (label, (edit, says)) in enumerate(BAD_CONFIGS.items()):
            run = private.run("form", 1, f"form-bad-{index}")
            config = run / ADAPTER_DIR / ADAPTER_CONFIG
            config.write_text(edit(json.loads(config.read_text())))
            bad.add(ledger.promote(private.releases, release_of(run)).release_id)
            report = client.post("/admin/reload").json()
            assert refusals(report) == [("form", "invalid_adapter")], label
            assert says in report["refused"][0]["reason"], (label, report["refused"][0]["reason"])
        traffic.join()
        failed_loads = [
            line for line in client.get("/metrics").text.splitlines() if 'outcome="failed"' in line
        ]
        assert not failed_loads or failed_loads[0].endswith(" 0.0")
        assert not bad & engine_models(engine_url)
        assert [r.status_code for r in responses] == [200] * 50
        assert all(
            valid(INVOICE, r.json()["data"]) and r.json()["release"] == good.release_id for r in responses
        )
        after = private.publish(
            "invoice", unique_adapter(home.adapters[2], private.root / "new"), "invoice-after"
        )
        assert after.release_id not in engine_models(engine_url)  # a genuinely new load
        assert after.release_id in client.post("/admin/reload").json()["loaded"]
        assert after.release_id in engine_models(engine_url)
        served = client.post("/v1/extract/invoice", json={"text": TEXTS[0]})
        assert served.status_code == 200 and served.json()["release"] == after.release_id
    assert {p.pid for p in engine_processes(engine_url)} == pids


# --- C4: size bombs --------------------------------------------------------------------------------

LAYER0_Q = "base_model.model.model.layers.0.self_attn.q_proj"


def _header_bomb(run: Path) -> None:
    tensors = {f"{LAYER0_Q}.lora_A.weight": ("BF16", [50_000_000_000])}  # 100 GB declared
    header = json.dumps(
        {k: {"dtype": d, "shape": s, "data_offsets": [0, 100_000_000_000]} for k, (d, s) in tensors.items()}
    )
    weights = run / ADAPTER_DIR / ADAPTER_WEIGHTS
    weights.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bytes(64))
    reseal(run)


def _sparse_2gb(run: Path) -> None:
    os.truncate(run / ADAPTER_DIR / ADAPTER_WEIGHTS, 2 << 30)  # sparse: no disk, no memory


def _rank_1024(run: Path) -> None:
    tensors = {
        f"{LAYER0_Q}.lora_A.weight": ("BF16", [1024, 576]),
        f"{LAYER0_Q}.lora_B.weight": ("BF16", [576, 1024]),
    }
    write_safetensors(run / ADAPTER_DIR / ADAPTER_WEIGHTS, tensors)
    config = run / ADAPTER_DIR / ADAPTER_CONFIG
    config.write_text(json.dumps({**json.loads(config.read_text()), "r": 1024, "target_modules": ["q_proj"]}))
    reseal(run)


@pytest.mark.parametrize(
    ("bomb", "code", "says"),
    [
        (_header_bomb, "unsupported_artifact", "declares 100000000000 bytes"),
        (_sparse_2gb, "unsupported_artifact", "2147483648 bytes, over the 1073741824-byte limit"),
        (_rank_1024, "invalid_adapter", "/r is 1024"),
    ],
)
def test_c4_size_bombs_are_refused_from_header_and_size_with_flat_memory(
    private: Private, engine_url: str, bomb: Any, code: str, says: str
) -> None:
    """C4: a header declaring a 100 GB tensor, a 2 GiB (sparse) weights file, rank 1024: refused from
    the header, the file size and the config before anything is allocated or sent to the engine; the
    process RSS, sampled every millisecond during the bind, grows by less than 50 MB."""
    private.publish("invoice", 1, "invoice-good")
    run = private.run("form", 0, "form-bomb")
    bomb(run)
    ledger.promote(private.releases, release_of(run))
    with private.gateway(engine_url, ledger_poll_s=3600).client() as client:
        me, peak, done = psutil.Process(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], me.memory_info().rss)
                time.sleep(0.001)

        before = me.memory_info().rss
        sampler = threading.Thread(target=sample)
        sampler.start()
        report = client.post("/admin/reload").json()
        done.set()
        sampler.join()
    assert refusals(report) == [("form", code)]
    assert says in report["refused"][0]["reason"]
    assert peak[0] - before < 50 * 2**20, f"RSS grew {(peak[0] - before) / 2**20:.1f} MB"
    assert release_of(run).release_id not in engine_models(engine_url)


# --- C6: content addressing ------------------------------------------------------------------------


def test_c6_republished_weights_get_a_new_name_and_match_a_cold_run(
    private: Private, engine_url: str, tmp_path_factory: pytest.TempPathFactory, home: Home
) -> None:
    """C6: v1 serves requests sharing a long prefix (warming vLLM's prefix cache); v2, different weights
    for the same schema, is published. Its served name changes (content-addressed), and its outputs at
    temperature 0 equal v2's cold run: v2's weights loaded under a never-used name before any v2
    traffic, so nothing cached could reach it. v1's outputs differ, so the comparison can fail."""
    from schemas.registry import load_schema

    strong = strong_adapters(tmp_path_factory, home)
    prefix = (
        "Accounts payable export, quarterly batch, vendor master data reconciled by the finance team. " * 8
    )
    texts = [prefix + text for text in TEXTS[:2]]
    v1_run, v2_run = (
        private.run("invoice", strong[0], "invoice-v1"),
        private.run("invoice", strong[1], "invoice-v2"),
    )
    registered = load_schema(private.schemas, "invoice")
    cold_name = f"c6-cold-{uuid.uuid4().hex[:8]}"
    loaded = httpx.post(
        engine_url + "/v1/load_lora_adapter",
        json={"lora_name": cold_name, "lora_path": str(v2_run / ADAPTER_DIR)},
        timeout=120,
    )
    assert loaded.status_code == 200, loaded.text
    try:
        cold_binding = Binding(
            "invoice",
            registered.version,
            cold_name,
            registered.json_schema,
            registered.instructions,
            "",
            registered.decoder_schema,
        )
        cold = [_engine_data(engine_url, engine_body(cold_binding, text, 256)) for text in texts]
        ledger.promote(private.releases, release_of(v1_run))
        with private.gateway(engine_url, ledger_poll_s=3600).client() as client:
            v1 = [
                [client.post("/v1/extract/invoice", json={"text": t}).json() for t in texts] for _ in range(2)
            ]
            ledger.promote(private.releases, release_of(v2_run))
            report = client.post("/admin/reload").json()
            v2 = [client.post("/v1/extract/invoice", json={"text": t}).json() for t in texts]
    finally:
        httpx.post(engine_url + "/v1/unload_lora_adapter", json={"lora_name": cold_name}, timeout=60)
    first, second = v1[0][0]["release"], v2[0]["release"]
    assert first != second and report["loaded"] == [second]
    assert second == ledger.release_id("invoice", load_manifest(v2_run).adapter_sha256 or "")
    assert [r["release"] for r in v2] == [second] * 2
    assert [r["data"] for r in v2] == cold
    assert [r["data"] for r in v1[1]] != cold  # v1's weights answer differently: the check has teeth
    assert all(valid(INVOICE, r["data"]) for r in v2)


def _engine_data(url: str, body: dict[str, Any]) -> Any:
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return json.loads(reply.json()["choices"][0]["message"]["content"])


# --- C7: the public port ---------------------------------------------------------------------------

ENGINE_ROUTES = [
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("POST", "/invocations"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("POST", "/update_weights"),
    ("POST", "/collective_rpc"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/sleep"),
    ("POST", "/wake_up"),
    ("GET", "/server_info"),
    ("GET", "/is_sleeping"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models/forma-base"),
    ("GET", "/version"),
    ("GET", "/load"),
    ("GET", "/health"),
]


def test_c7_engine_and_admin_endpoints_are_not_reachable_on_the_public_port(
    private: Private, engine_url: str, home: Home
) -> None:
    """C7: vLLM's admin and runtime-LoRA routes do not exist on the gateway, whatever the key (404/405,
    never forwarded: the engine's model list is unchanged after a load attempt with the admin key);
    /metrics needs the admin scope; the engine listens on 127.0.0.1 only, as its command line says."""
    private.publish("invoice", 1, "invoice-good")
    attempt = {"lora_name": "c7-smuggled", "lora_path": str(home.adapters[4])}
    with private.gateway(engine_url).client() as admin, httpx.Client(base_url=admin.base_url) as anonymous:
        before = engine_models(engine_url)  # the gateway has loaded its release by now
        scoped = httpx.Client(base_url=admin.base_url, headers={"Authorization": f"Bearer {CONTACT_ONLY}"})
        for method, path in ENGINE_ROUTES:
            for client in (anonymous, scoped, admin):
                status = client.request(method, path, json=attempt).status_code
                assert status in {401, 403, 404, 405} and (client is not admin or status in {404, 405}), (
                    path,
                    status,
                )
        assert anonymous.get("/metrics").status_code == 401 and scoped.get("/metrics").status_code == 403
        metrics = admin.get("/metrics")
        scoped.close()
    assert (
        metrics.status_code == 200 and "forma_requests_total" in metrics.text and "vllm:" not in metrics.text
    )
    assert engine_models(engine_url) == before and "c7-smuggled" not in before
    processes = engine_processes(engine_url)
    command = processes[0].cmdline()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    listening = [
        c.laddr.ip
        for p in processes
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and set(listening) == {"127.0.0.1"}
    public = ServeSettings(
        schemas_root=Path("s"), runs_root=Path("r"), releases_root=Path("l"), host="0.0.0.0"
    )
    flags = engine_command(public, Path("/m"), 8000)
    assert flags[flags.index("--host") + 1] == "127.0.0.1"  # a public gateway still keeps the engine private
