"""The models and data the task-adapter tests share: a keyword model like a Hugging Face
classifier (``model(input_ids=..., attention_mask=..., labels=...)`` returning a dict with
``logits`` and, given labels, ``loss``) and its token data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenNet(nn.Module):
    """A keyword model like a Hugging Face classifier: ids + mask (+ labels) -> .logits/.loss."""

    def __init__(self, vocab=11, dim=6, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        logits = self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def token_data(n=37, seq=5, vocab=11, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    labels = torch.randint(0, classes, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
