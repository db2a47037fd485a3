"""`python -m raycf` is the `raycf` command."""

from raycf.cli import main

main()
