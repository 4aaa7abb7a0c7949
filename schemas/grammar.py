"""Compile a schema the way the server will, then probe what the compiled grammar really enforces.

Runs inside the grammar worker process (`schemas.worker`): it imports vLLM, xgrammar and llguidance and
may meet a schema that explodes, so the parent can kill it. `schemas.backend` picks the backend as
vLLM's `auto` mode does; this module compiles with the base model's tokenizer and runs the probes.
"""

from __future__ import annotations

import json
import random
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from schemas.backend import back_to_one_of, decoder_schema, select_backend
from schemas.errors import SchemaError
from schemas.probes import keyword_sites, probe_schema, valid_instance, witness
from schemas.report import GrammarReport, KeywordReport

PROBE_BUDGET_S = 3.0  # per schema; keywords not probed in time are reported as post-validated


class GrammarEngine:
    """The tokenizer-bound compilers, built once per worker (loading them costs a few seconds)."""

    def __init__(self, tokenizer_path: Path) -> None:
        import llguidance.hf
        import xgrammar as xgr
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=len(self.tokenizer))
        self._compilers: tuple[Any, Any] | None = None
        self.ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer)  # type: ignore[arg-type]
        import vllm

        self.versions = {
            "vllm": vllm.__version__,
            "xgrammar": version("xgrammar"),
            "llguidance": version("llguidance"),
        }
        self.cache: dict[str, bool | None] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        """Import and initialise in the zygote what every check needs (vLLM's checks, the validator,
        Faker), so each forked child starts warm. Nothing here compiles a grammar."""
        warm: dict[str, Any] = {
            "type": "object",
            "properties": {"e": {"type": "string", "format": "email", "maxLength": 9}},
            "required": ["e"],
        }
        select_backend(warm)
        witness(warm["properties"]["e"], "maxLength", warm, random.Random(0))

    def compilers(self) -> tuple[Any, Any]:
        """(engine compiler, probe compiler), built on first use: in the forked child, never in the
        zygote, so no compiler thread pool is ever copied across a fork."""
        import xgrammar as xgr

        if self._compilers is None:
            self._compilers = (
                xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False),
                # Probes only match strings, so their grammars skip the per-token mask tables: the
                # same grammar at a fraction of the compile time.
                xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1, cache_enabled=False),
            )
        return self._compilers

    def compile(self, backend: str, schema: dict[str, Any], probe: bool = False) -> Any:
        """A matcher factory for `schema`, compiled with the tokenizer as the engine does it."""
        import llguidance
        import xgrammar as xgr

        if backend == "xgrammar":
            compiler = self.compilers()[1 if probe else 0]
            ctx = compiler.compile_json_schema(json.dumps(schema), any_whitespace=True)
            return lambda: ("xgrammar", xgr.GrammarMatcher(ctx, terminate_without_stop_token=True))
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": True}
        )
        error = llguidance.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error:
            raise ValueError(error)
        return lambda: ("guidance", llguidance.LLMatcher(self.ll_tokenizer, grammar))

    def accepts(self, factory: Any, value: Any) -> bool:
        kind, matcher = factory()
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if kind == "xgrammar":
            return bool(matcher.accept_string(text)) and matcher.is_completed()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    def check(self, schema: dict[str, Any]) -> GrammarReport:
        backend, relaxed, notes, removed = decoder_schema(schema)
        decoder = relaxed if relaxed is not None else schema
        start = time.perf_counter()
        try:
            factory = self.compile(backend, decoder)
        except Exception as err:
            raise SchemaError(
                "schema_too_complex",
                f"{backend} could not compile the schema: {err}",
                "",
                "simplify the schema",
            ) from None
        compiled = time.perf_counter() - start
        keywords, more = self.probe(backend, decoder, factory)
        keywords = back_to_one_of(
            keywords, [p.removesuffix("/oneOf") for p in removed if p.endswith("/oneOf")]
        )
        keywords += [
            KeywordReport(
                pointer=p,
                keyword=p.rsplit("/", 1)[1],
                enforcement="post-validated",
                reason="no backend implements it; relaxed in the decoder's schema",
            )
            for p in removed
        ]
        return GrammarReport(
            backend=backend,
            backend_versions=self.versions,
            compile_seconds=round(compiled, 4),
            probe_seconds=round(time.perf_counter() - start - compiled, 4),
            keywords=sorted(keywords, key=lambda k: k.pointer),
            notes=notes + more,
            decoder_schema=relaxed,
        )

    def probe(
        self, backend: str, schema: dict[str, Any], factory: Any
    ) -> tuple[list[KeywordReport], list[str]]:
        rng, notes, out = random.Random(0), [], []
        from schemas.probes import _validator

        try:
            whole = valid_instance(schema, schema, rng, _validator(schema))
        except Exception:  # e.g. RecursionError, or a ref that only resolves inside an embedded resource
            whole = None
        if whole is not None and not self.accepts(factory, whole):
            notes.append("the decoder rejected a valid instance: it may be stricter than the schema")
        deadline = time.perf_counter() + PROBE_BUDGET_S
        for pointer, keyword, node in keyword_sites(schema):
            if time.perf_counter() > deadline:
                out.append(
                    KeywordReport(
                        pointer=pointer,
                        keyword=keyword,
                        enforcement="post-validated",
                        reason="not probed within the time budget; checked after decoding",
                    )
                )
                continue
            out.append(self.probe_one(backend, schema, pointer, keyword, node, rng))
        return out, notes

    def probe_one(
        self,
        backend: str,
        root: dict[str, Any],
        pointer: str,
        keyword: str,
        node: dict[str, Any],
        rng: random.Random,
    ) -> KeywordReport:
        probe = probe_schema(node, root)
        key = json.dumps([backend, keyword, probe], sort_keys=True)
        if probe is None:
            enforced = None
        elif key in self.cache:
            enforced = self.cache[key]
        else:
            try:
                enforced = self.cache[key] = self._enforced(backend, probe, keyword, node, root, rng)
            except Exception:  # the fragment alone recurses or loses its ref base: leave it to the validator
                enforced = None
        reason = {
            True: "the grammar rejected a violating instance",
            False: "the grammar accepted a violating instance; checked after decoding",
            None: "no violating instance could be built to probe it; checked after decoding",
        }[enforced]
        return KeywordReport(
            pointer=pointer,
            keyword=keyword,
            enforcement="decoder" if enforced else "post-validated",
            reason=reason,
        )

    def _enforced(
        self,
        backend: str,
        probe: dict[str, Any],
        keyword: str,
        node: dict[str, Any],
        root: dict[str, Any],
        rng: random.Random,
    ) -> bool | None:
        bad = witness(node, keyword, root, rng)
        if bad is None:
            return None
        try:
            return not self.accepts(self.compile(backend, probe, probe=True), bad)
        except Exception:  # the fragment alone may not compile (e.g. a ref outside $defs): not probed
            return None
