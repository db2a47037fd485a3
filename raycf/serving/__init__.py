"""`raycf serve`: a run's checkpoint online as a Ray Serve application (JSON over HTTP), requests batched
dynamically into the one ranking path (raycf.eval.ranking), so that a served list is `raycf score`'s."""
