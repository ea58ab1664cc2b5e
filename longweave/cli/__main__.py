"""`python -m longweave.cli` runs the command line."""

from longweave.cli import main

main()
