"""The `carbrand-search` command line: each command parses its options, calls one function of the
package and prints what it returned. The commands live by what they work on (data, search,
results); importing this package registers them all on `app`."""

# The order of these imports is the order of the commands in `--help`.
from carbrand_search.cli import data  # noqa: I001
from carbrand_search.cli import search
from carbrand_search.cli import results
from carbrand_search.cli.app import app, main

__all__ = ["app", "data", "main", "results", "search"]
