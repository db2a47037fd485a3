"""`python -m raycf` is the `raycf` command."""

from raycf.cli.main import main

main()
