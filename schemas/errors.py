"""The errors the registry raises: each names where (file, line, JSON pointer), what, and the fix.

One exception type for the user's schema (`SchemaError`), one record type for a bad pair
(`PairIssue`) and one exception for pairs refused as a whole (`PairsRefused`: an empty or over-quota
file, or `--strict` with bad lines), so the CLI and any HTTP front end print them the same way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchemaError(Exception):
    """A schema forma refuses. `code` is stable (for APIs), `pointer` names the keyword."""

    def __init__(
        self, code: str, message: str, pointer: str | None = "", fix: str = "", file: str | None = None
    ) -> None:
        self.code, self.message, self.pointer, self.fix, self.file = code, message, pointer, fix, file
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.file}: " if self.file else ""
        at = f" at {self.pointer or '/'}" if self.pointer is not None else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}[{self.code}]{at}: {self.message}.{fix}"


class RegistryError(Exception):
    """A registry operation that cannot proceed (unknown name or version, strict failure, ...)."""


class PairIssue(BaseModel):
    """One problem with one line of a pairs file. Invalid lines are listed, never stored silently."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="The pairs file the line came from.")
    line: int = Field(description="1-based line number (CSV: the record's first line).")
    kind: str = Field(description="parse | invalid | duplicate | conflict | too_long | empty | quota")
    pointer: str = Field(default="", description="JSON pointer into the pair, e.g. /output/priority.")
    message: str = Field(description="What is wrong and how to fix it.")

    def render(self) -> str:
        pointer = f" {self.pointer}" if self.pointer else ""
        return f"{self.file}:{self.line}: {self.kind}{pointer}: {self.message}"


class PairsRefused(RegistryError):
    """Pairs refused as a whole (an empty or over-quota file, or `--strict` with bad lines): nothing
    was written. `issues` names each file and line."""

    def __init__(self, summary: str, issues: list[PairIssue]) -> None:
        self.summary, self.issues = summary, issues
        super().__init__(f"{summary}\n" + "\n".join(i.render() for i in issues))
