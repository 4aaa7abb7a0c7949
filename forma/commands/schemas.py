"""`forma register`, `forma generate` and `forma schemas list|show|diff`: the schema registry verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from finetune.config import TrainConfig
from forma.console import console, errors, fail
from forma.paths import layout

if TYPE_CHECKING:
    from schemas.pairs import RawPair
    from schemas.register import TokenCounter

app = typer.Typer(help="List, show and diff registered schema versions.", no_args_is_help=True)
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
# The trainer refuses longer pairs at its default max_length; registration refuses them first, by line.
DEFAULT_MAX_TOKENS: int = TrainConfig.model_fields["max_length"].default


def _tokenizer_path() -> Path:
    from finetune.base_model import BaseModelError, resolve_base

    try:
        return Path(resolve_base(None, layout().models).path)
    except BaseModelError as err:
        fail(escape(str(err)))


def token_counter(model_path: Path) -> TokenCounter:
    """Tokens of each pair's prompt + target, as the trainer counts them (finetune.data.row_lengths)."""
    from finetune.data import row_lengths
    from finetune.model import load_tokenizer
    from schemas.prompt import build_example

    tokenizer = load_tokenizer(str(model_path))

    def count(name: str, schema: dict, instructions: str | None, pairs: list[RawPair]) -> list[int]:
        rows = [build_example(name, schema, p.input, p.output, instructions) for p in pairs]
        return [row_lengths(tokenizer, row)[1] for row in rows]

    return count


def _fail_on_refusal(err: Exception) -> None:
    """End the verb with the registry's own message for a refusal; re-raise anything else (a bug)."""
    from schemas.errors import PairsRefused, RegistryError, SchemaError

    if isinstance(err, PairsRefused):
        for issue in err.issues:
            errors.print(issue.render(), markup=False)
        fail(escape(err.summary))
    if isinstance(err, SchemaError | RegistryError | OSError):
        fail(escape(str(err)))
    raise err


def _naming_source(err: Exception, source: str) -> Exception:
    """A schema refusal names the file (or module:Class) it came from, like a parse error does."""
    from schemas.errors import SchemaError

    if isinstance(err, SchemaError) and err.file is None:
        return SchemaError(err.code, err.message, err.pointer, err.fix, source)
    return err


def _print_outcome(outcome) -> None:  # type: ignore[no-untyped-def]
    console.print(outcome.report.render(), markup=False)
    problems = [i for i in outcome.issues if i.kind != "duplicate"]
    for issue in problems:
        errors.print(issue.render(), style="yellow", markup=False)
    duplicates = len(outcome.issues) - len(problems)
    if duplicates:
        errors.print(
            f"{duplicates} exact duplicate pair(s) dropped (already stored or repeated)", style="yellow"
        )
    state = "registered" if outcome.changed else "unchanged (already registered)"
    console.print(f"{outcome.name} {outcome.version}: {state}; {outcome.added} pair(s) added")
    if outcome.manifest:
        m = outcome.manifest
        console.print(f"dataset: {m.counts} ({m.synthetic} synthetic), sha256 {m.sha256[:12]}")
        for warning in m.warnings[:20]:
            errors.print(f"coverage: {warning}", style="yellow", markup=False)


def register(
    name: Annotated[str, typer.Argument(help="Schema name: lowercase letters, digits, '_' or '-'.")],
    schema: Annotated[
        str | None, typer.Option(help="A JSON Schema file, or module:Class of a pydantic model.")
    ] = None,
    pairs: Annotated[list[Path] | None, typer.Option(help="JSONL or CSV pairs file (repeatable).")] = None,
    instructions: Annotated[Path | None, typer.Option(help="Markdown instructions for the prompt.")] = None,
    templates: Annotated[
        Path | None, typer.Option(help="Folder of *.j2 Jinja templates for `generate`.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Abort, writing nothing, if any pair is bad.")] = False,
    max_tokens: Annotated[
        int,
        typer.Option(
            help="Refuse pairs whose prompt + JSON target exceed this many tokens of the base model "
            "(the training max_length; 0: no limit)."
        ),
    ] = DEFAULT_MAX_TOKENS,
    example: Annotated[
        bool, typer.Option(help="Register the bundled example NAME (schema, pairs, templates).")
    ] = False,
) -> None:
    """Register a JSON Schema (and pairs): checked, compiled by the serving grammar backend, versioned."""
    from schemas.register import read_schema_source
    from schemas.register import register as register_schema
    from schemas.worker import GrammarWorker

    if example:
        folder = EXAMPLES / name
        if not folder.is_dir():
            fail(
                f"no bundled example {name!r}; examples: {', '.join(sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))}"
            )
        schema, pairs = str(folder / "schema.json"), [*(pairs or []), folder / "pairs.jsonl"]
        instructions, templates = (
            instructions or folder / "instructions.md",
            templates or folder / "templates",
        )
    if schema is None:
        fail("give --schema FILE (or module:Class), or --example for a bundled example")
    try:
        document, source = read_schema_source(schema)
        model = _tokenizer_path()
        counter = token_counter(model) if pairs and max_tokens > 0 else None
        with GrammarWorker(model) as worker:
            outcome = register_schema(
                layout().schemas,
                name,
                document,
                check=worker.check,
                pairs=pairs or [],
                instructions=instructions.read_text(encoding="utf-8") if instructions else None,
                templates=templates,
                strict=strict,
                source=source,
                count_tokens=counter,
                max_tokens=max_tokens,
            )
    except Exception as err:
        _fail_on_refusal(_naming_source(err, schema))
    _print_outcome(outcome)
    if outcome.issues and strict:
        raise typer.Exit(1)


def generate(
    name: Annotated[str, typer.Argument(help="A registered schema.")],
    n: Annotated[int, typer.Option("--n", help="How many pairs to generate.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same pairs.")] = 0,
    teacher_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL of a teacher model.")
    ] = None,
    teacher_model: Annotated[str, typer.Option(help="Model name at the teacher endpoint.")] = "teacher",
    label: Annotated[
        Path | None, typer.Option(help="With --teacher-url: a text file, one raw input per line, to label.")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Abort, writing nothing, if any generated pair is bad.")
    ] = False,
) -> None:
    """Generate synthetic pairs (templates, or a teacher model) and add them to the dataset."""
    from schemas.synthetic import generate_pairs

    try:
        outcome = generate_pairs(
            layout().schemas,
            name,
            n=n,
            seed=seed,
            teacher_url=teacher_url,
            teacher_model=teacher_model,
            label_file=label,
            strict=strict,
        )
    except Exception as err:
        _fail_on_refusal(err)
    _print_outcome(outcome)


@app.command("list")
def list_() -> None:
    """Every registered schema with its current version and version count."""
    from schemas.registry import list_schemas

    indexes = list_schemas(layout().schemas)
    if not indexes:
        console.print("no schema registered: run `forma register NAME --schema FILE`")
    for index in indexes:
        console.print(f"{index.name}\t{index.current}\t{len(index.versions)} version(s)")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A registered schema.")],
    version: Annotated[str | None, typer.Option(help="A version id or prefix; default: current.")] = None,
) -> None:
    """The schema, its registration report and its dataset counts."""
    from schemas.errors import RegistryError
    from schemas.registry import load_schema

    try:
        registered = load_schema(layout().schemas, name, version)
    except RegistryError as err:
        fail(escape(str(err)))
    console.print(json.dumps(registered.json_schema, indent=2, ensure_ascii=False), markup=False)
    console.print(registered.report.render(), markup=False)
    manifest = layout().schemas / name / "dataset" / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        console.print(
            f"dataset: {data['counts']} ({data['synthetic']} synthetic), sha256 {data['sha256'][:12]}"
        )


@app.command("diff")
def diff(
    name: Annotated[str, typer.Argument(help="A registered schema.")],
    old: Annotated[str, typer.Argument(help="Version id or prefix.")],
    new: Annotated[str | None, typer.Argument(help="Version id or prefix; default: current.")] = None,
) -> None:
    """What changed between two versions, as JSON pointers."""
    from schemas.errors import RegistryError
    from schemas.registry import load_schema
    from schemas.versions import diff_schemas

    try:
        a, b = load_schema(layout().schemas, name, old), load_schema(layout().schemas, name, new)
    except RegistryError as err:
        fail(escape(str(err)))
    changes = diff_schemas(a.json_schema, b.json_schema)
    console.print(f"{name}: {a.version} -> {b.version}: {len(changes)} change(s)", markup=False)
    for line in changes:
        console.print(line, markup=False)
