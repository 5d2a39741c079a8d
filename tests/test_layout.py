"""The package's shape, checked: folders import only the layers below them, every module says
its job, only the record and study modules touch Optuna's user attributes."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "carbrand_search"
# Lower layers never import higher ones; folders of one layer do not import each other.
LAYERS = {
    "core": 0, "data": 1, "models": 1, "training": 2, "search": 3, "reports": 4, "": 5, "cli": 6
}  # fmt: skip
MODULES = sorted(PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str:
    """'carbrand_search.search.study' → 'search'; top-level modules → ''."""
    parts = module.split(".")[1:]
    return parts[0] if parts and (PACKAGE / parts[0]).is_dir() else ""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imported(path: Path) -> set[str]:
    """Every carbrand_search module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("carbrand_search"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("carbrand_search")}
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    # `python -m carbrand_search` is the command line's second door: it sits with cli/.
    own = "cli" if path.name == "__main__.py" else layer_of(module_name(path))
    for target in imported(path):
        other = layer_of(target)
        assert other == own or LAYERS[other] < LAYERS[own], (
            f"{module_name(path)} ({own or 'top'}) imports {target} ({other or 'top'})"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_module_says_its_job(path: Path) -> None:
    if path.name == "__main__.py":
        return
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and len(docstring) > 20, f"{module_name(path)} has no docstring"


def test_only_the_record_and_the_study_touch_user_attributes() -> None:
    owners = {PACKAGE / "search" / "record.py", PACKAGE / "search" / "study.py"}
    for path in MODULES:
        if path in owners:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("user_attrs", "set_user_attr"):
                pytest.fail(f"{module_name(path)}:{node.lineno} uses .{node.attr}")


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    upward = tmp_path / "bad.py"
    upward.write_text("from carbrand_search.search.study import stored_spec\n")
    (target,) = imported(upward)
    assert LAYERS[layer_of(target)] > LAYERS["training"]
