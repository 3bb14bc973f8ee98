"""`python -m etcdha` runs the command line."""

from etcdha.cli import main

main()
