"""The one scoring path: a model ranks the items for a batch of users from their input rows, known items masked.
Evaluation, `raycf score`'s actors and the Python API (`raycf.load(...).recommend`) all rank through `rank`."""

from __future__ import annotations

import scipy.sparse as sp
import torch

from raycf.metrics import top_k
from raycf.models import Recommender, SparseBatch


def rank(model: Recommender, inputs: sp.csr_matrix, known: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top `k` item indices (best first, ties to the lower index, -1 padded when fewer candidates)
    and their scores, the model reading `inputs` (users x items) and never ranking `known`."""
    with torch.no_grad():
        scores = model.scores(SparseBatch.from_csr(inputs, model.device))
        top = top_k(scores, known, k)
        return top, scores.gather(1, top.clamp_min(0))
