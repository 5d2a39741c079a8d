"""The README and the docs site: the set-up commands, the length, the generated references."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from carbrand_search.core.fields import field_docs
from carbrand_search.search import reference

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
INSTALL = "python3.11 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 torchvision==0.29.1 -e '.[dev,kaggle]'"


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    """CI and a new user run them as they are: the install with the demo, then the tests."""
    title, blank, fence, demo, tests, close = README.splitlines()[:6]
    assert (title, blank, fence, close) == ("# carbrand-search", "", "```bash", "```")
    assert demo.startswith(INSTALL + " && ") and "carbrand-search run cnn-demo" in demo
    assert tests == f"{INSTALL} && python -m pytest -q -n 2"
    # .ci/run runs the README's test command, not a copy that could drift from it.
    assert "python -m pytest -q -n 2" in (REPO / ".ci" / "run").read_text()


def test_the_readme_reads_in_five_minutes() -> None:
    assert len(README.split()) <= 1500


@pytest.mark.parametrize(
    "path",
    [REPO / "README.md", REPO / "bench" / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))],
    ids=lambda p: p.name,
)
def test_no_page_points_at_issue_numbers(path: Path) -> None:
    assert not re.search(r"\bissues? \d+", path.read_text(encoding="utf-8"), re.IGNORECASE)


def test_every_study_file_key_is_documented() -> None:
    assert reference.undocumented() == []


def test_a_field_without_a_docstring_is_found() -> None:
    @dataclasses.dataclass(frozen=True)
    class Settings:
        told: int = 1
        """Has its docstring."""
        untold: int = 2

    assert field_docs(Settings) == {"told": "Has its docstring."}


def test_the_reference_states_types_ranges_and_defaults_from_the_code() -> None:
    text = reference.markdown()
    assert "| `epochs` | an integer | in [1, 10000] | `10` | Training epochs of a trial. |" in text
    assert "| `min_scale` | a number | in (0, 1] | `0.35` |" in text
    assert "| `filters` | a list of integers | in [1, 4096] | `[32, 64, 128]` |" in text
    # A key one study cannot vary says so, with the reason the spec gives.
    assert re.search(r"\| `monitor` .* Not searchable: it is the study's objective", text)
    for table in ("study", "data", "train", "distill", "sampler", "pruner", "tracking"):
        assert f"### `[{table}]`" in text
    assert "### `[model]` of `resnet`" in text


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link, a missing page or a failed generated reference fails the build."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    cli_page = (tmp_path / "cli" / "index.html").read_text(encoding="utf-8")
    assert "carbrand-search run" in cli_page and "--n-trials" in cli_page
    keys_page = (tmp_path / "study-files" / "index.html").read_text(encoding="utf-8")
    assert "resume_every_s" in keys_page
