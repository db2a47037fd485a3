"""The `raycf` command: thin Click commands over the stages' plain functions."""
