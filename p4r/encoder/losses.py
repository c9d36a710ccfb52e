"""The training losses: InfoNCE of a user vector against candidate texts, some masked out.

The linear head contrasts each user with every text of the catalogue
(:func:`catalogue_info_nce`); LoRA and full training contrast with the other positives of the
batch (:func:`in_batch_info_nce`). Both mask candidates that are not wrong answers (the user's
own items, sibling personas of the positive's item). Torch is imported on call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def masked_info_nce(users: Any, candidates: Any, targets: Any, mask: Any, tau: float) -> Any:
    """Cross-entropy of ``softmax(users · candidatesᵀ / τ)`` at ``targets``, with the
    candidates ``mask`` marks (True) left out of each row's softmax."""
    import torch

    logits = users @ candidates.T / tau
    logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


def catalogue_info_nce(history: Any, weights: Any, texts: Any, positives: Any, mask: Any,
                       tau: float) -> Any:
    """The head's loss: each tuple's user vector (its unit ``history`` rows, padded, summed
    with decay ``weights``) against every catalogue text; ``positives`` index ``texts`` and
    ``mask`` hides the user's other own items."""
    import torch

    users = torch.nn.functional.normalize((history * weights[..., None]).sum(1), dim=-1)
    return masked_info_nce(users, texts, positives, mask, tau)


def in_batch_info_nce(users: Any, positives: Any, items: Sequence[str], texts: Sequence[str],
                      tau: float) -> Any:
    """The LoRA/full loss: row i's positive is ``positives[i]``; the other rows' positives
    are its negatives, except those of the same item or with the same text."""
    import torch

    n = len(items)
    mask = torch.tensor([[i != j and (items[i] == items[j] or texts[i] == texts[j])
                          for j in range(n)] for i in range(n)], device=users.device)
    return masked_info_nce(users, positives, torch.arange(n, device=users.device), mask, tau)
