"""mkdocs hooks: pages whose text comes from the code and the repository, so they cannot drift.

- `<!-- generated: study-file-reference -->`: every study-file key's type, range, default and
  meaning, from the config dataclasses;
- `<!-- generated: cli-reference -->`: every command and option, from the Typer app, by Typer's
  own `typer MODULE utils docs` (a build fails if it does);
- `<!-- include: PATH -->`: the file at PATH, relative to the repository root (bench/RESULTS.md
  lives beside the benches it describes)."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: (\S+) -->")


def study_file_reference() -> str:
    from carbrand_search.search.reference import markdown

    return markdown()


def cli_reference() -> str:
    docs = subprocess.run(
        [sys.executable, "-m", "typer", "carbrand_search.cli", "utils", "docs",
         "--name", "carbrand-search", "--title", "Commands"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    return docs.replace("\n#", "\n##")  # under the page's own title


GENERATED = {"study-file-reference": study_file_reference, "cli-reference": cli_reference}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for name, render in GENERATED.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return INCLUDE.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), markdown)
