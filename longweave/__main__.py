"""`python -m longweave` runs the command line, as the `longweave` script does."""

from longweave.cli import main

main()
