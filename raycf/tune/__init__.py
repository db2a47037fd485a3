"""`raycf tune` on Ray Tune: the trainable, scheduling, searchers, robust selection, repeats and monitoring."""
