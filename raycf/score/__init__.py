"""`raycf score`: the Ray Data batch job that ranks every user with one checkpoint."""
