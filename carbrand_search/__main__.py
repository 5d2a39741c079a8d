"""`python -m carbrand_search` = the `carbrand-search` command."""

from carbrand_search.cli import main

main()
