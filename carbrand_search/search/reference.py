"""The study-file reference: every key's type, range, default and meaning, read from the config
dataclasses (their fields, `BOUNDS` and field docstrings), so the docs cannot drift from the code.
The docs site renders it (docs/hooks.py); a test fails when a field has no docstring."""

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from carbrand_search import models
from carbrand_search.core.config import (
    DataConfig,
    DistillConfig,
    PrunerConfig,
    SamplerConfig,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
)
from carbrand_search.core.fields import Bound, describe, field_docs, field_types
from carbrand_search.search.spec import FIXED_PER_STUDY

TABLES: tuple[tuple[str, type], ...] = (
    ("study", StudyConfig),
    ("data", DataConfig),
    ("train", TrainConfig),
    ("distill", DistillConfig),
    ("sampler", SamplerConfig),
    ("pruner", PrunerConfig),
    ("tracking", TrackingConfig),
)


@dataclass(frozen=True)
class KeyDoc:
    """One key of a study file as the reference shows it."""

    key: str
    type: str
    range: str
    default: str
    doc: str  # "" when the field has no docstring


def toml_value(value: Any) -> str:
    """A default as it is written in a study file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def keys(section: str, cls: type) -> Iterator[KeyDoc]:
    """The keys of one table, in the order the class declares them."""
    types_, docs = field_types(cls), field_docs(cls)
    bounds: dict[str, Bound] = dict(getattr(cls, "BOUNDS", {}))
    for f in dataclasses.fields(cls):
        bound = bounds.get(f.name)
        yield KeyDoc(
            key=f"{section}.{f.name}",
            type=describe(types_[f.name]),
            range=str(bound) if bound else "",
            default=toml_value(f.default),
            doc=docs.get(f.name, ""),
        )


def model_families() -> dict[type, list[str]]:
    """Each model-parameters class and the registry names that take it."""
    families: dict[type, list[str]] = {}
    for name, entry in models.REGISTRY.items():
        families.setdefault(entry.params, []).append(name)
    return families


def every_key() -> Iterator[tuple[str, KeyDoc]]:
    """(table heading, key) for every key of every table, model families included."""
    for section, cls in TABLES:
        for doc in keys(section, cls):
            yield f"`[{section}]`", doc
    for cls, names in model_families().items():
        for doc in keys("model", cls):
            yield f"`[model]` of {', '.join(f'`{n}`' for n in names)}", doc


def undocumented() -> list[str]:
    """Keys whose field has no docstring (the test that guards the reference reads this)."""
    return [doc.key for _, doc in every_key() if not doc.doc]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown() -> str:
    """The reference as Markdown: one table per study-file table."""
    lines: list[str] = []
    heading = ""
    for table, doc in every_key():
        if table != heading:
            heading = table
            lines += ["", f"### {table}", ""]
            lines += ["| key | type | allowed | default | meaning |", "|---|---|---|---|---|"]
        why = FIXED_PER_STUDY.get(doc.key)
        fixed = f" Not searchable: {why}." if why else ""
        lines.append(
            f"| `{doc.key.split('.', 1)[1]}` | {_cell(doc.type)} | {_cell(doc.range)} | "
            f"`{doc.default}` | {_cell(doc.doc)}{fixed} |"
        )
    return "\n".join(lines).lstrip("\n") + "\n"
