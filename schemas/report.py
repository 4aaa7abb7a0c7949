"""Records of a registration: which keywords the constrained decoder enforces, which are post-validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Enforcement = Literal["decoder", "post-validated"]


class KeywordReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pointer: str = Field(
        description="JSON pointer of the keyword in the schema, e.g. /properties/code/pattern."
    )
    keyword: str
    enforcement: Enforcement = Field(
        description="decoder: a probe showed the compiled grammar rejects a violation. post-validated: the "
        "grammar let a violation through (or could not be probed), so only the output validator checks it."
    )
    reason: str = Field(default="", description="The probe result in words.")


class GrammarReport(BaseModel):
    """What the grammar worker found: the backend vLLM's `auto` mode would pick, compile time, probes."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["xgrammar", "guidance"]
    backend_versions: dict[str, str] = Field(default_factory=dict)
    compile_seconds: float
    probe_seconds: float = 0.0
    keywords: list[KeywordReport] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="E.g. why xgrammar was passed over.")
    decoder_schema: dict[str, Any] | None = Field(
        default=None,
        description="The schema to hand the constrained decoder when it differs from the registered one: "
        "keywords no backend implements are removed here and post-validated. None: use the schema as is.",
    )


class RegistrationReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    schema_sha256: str
    grammar: GrammarReport

    @property
    def post_validated(self) -> list[KeywordReport]:
        return [k for k in self.grammar.keywords if k.enforcement == "post-validated"]

    def render(self) -> str:
        g = self.grammar
        lines = [
            f"{self.name} version {self.version}: backend {g.backend}, compiled in {g.compile_seconds:.2f} s; "
            f"{len(g.keywords) - len(self.post_validated)} keyword(s) enforced by the decoder, "
            f"{len(self.post_validated)} post-validated"
        ]
        lines += [f"  note: {note}" for note in g.notes]
        for k in g.keywords:
            lines.append(f"  {k.enforcement:<14} {k.pointer}  {k.reason}")
        return "\n".join(lines)
