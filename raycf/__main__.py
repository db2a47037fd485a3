"""`python -m raycf` is the `raycf` command."""

from raycf.cli.launch import main

main()
