"""Hugging Face transformers, built from a config: no hub, no download.

:func:`bert` is a small ``BertForSequenceClassification`` sized for the built-in token
data (:func:`basinscope.data.load_tokens`), a real ecosystem model that runs through every
analysis offline. It needs the optional extra: ``pip install 'basinscope[transformers]'``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from basinscope._checks import finite_float, positive_int
from basinscope.errors import BasinscopeError

__all__ = ["INSTALL_HINT", "bert", "require_transformers"]

INSTALL_HINT = "pip install 'basinscope[transformers]'"


def require_transformers(what: str) -> Any:
    """The ``transformers`` module, or a BasinscopeError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise BasinscopeError(
            f"{what} needs the transformers package, which is not installed ({e}). Install "
            f"it with {INSTALL_HINT}, or use a built-in model without it (mlp, lenet, resnet)."
        ) from None
    return transformers


def bert(
    vocab_size: int = 32,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 32,
    num_classes: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A small ``transformers.BertForSequenceClassification`` made from a ``BertConfig``.

    The defaults (20,386 parameters) fit the built-in ``tokens`` data
    (ids below 32, 16 positions). ``num_classes`` is the config's ``num_labels``.
    ``dropout`` sets both the hidden and the attention dropout (0 by default, so that
    training and evaluation see the same function). Attention is the ``eager``
    implementation: PyTorch's fused attention has no ``vmap`` rule, and the engine
    evaluates many points at once with ``torch.func.vmap``.

    The model is called as ``model(input_ids=..., attention_mask=...)`` and returns an
    object with ``.logits`` (batch, classes); given ``labels=`` it also returns its own
    ``.loss`` (cross-entropy). Weights come from PyTorch's RNG, so ``torch.manual_seed(k)``
    before construction (``init_seed`` of :func:`~basinscope.models.build_model`) fixes
    them. Submodule names are those of transformers (``bert.encoder.layer.0.attention...``,
    ``classifier``).
    """
    sizes = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "num_classes": num_classes,
    }
    for key, v in sizes.items():
        positive_int(key, v, high=1_000_000)
    finite_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
    if hidden_size % num_attention_heads:
        raise BasinscopeError(
            f"bert: hidden_size must be a multiple of num_attention_heads, found "
            f"hidden_size={hidden_size} and num_attention_heads={num_attention_heads}. E.g. "
            f'--model-kwargs \'{{"hidden_size": {num_attention_heads * 16}, '
            f'"num_attention_heads": {num_attention_heads}}}\'.'
        )
    transformers = require_transformers("the model bert")
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_classes,
        hidden_dropout_prob=float(dropout),
        attention_probs_dropout_prob=float(dropout),
        attn_implementation="eager",
    )
    return transformers.BertForSequenceClassification(config)
