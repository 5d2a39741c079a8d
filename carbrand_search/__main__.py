"""`python -m carbrand_search` = the `carbrand-search` command."""

from carbrand_search.cli import app

app(prog_name="carbrand-search")
