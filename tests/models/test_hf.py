"""The built-in BERT's factory: registered in the zoo, its arguments checked, and a clear
install hint when the optional transformers package is missing (no transformers needed)."""

from __future__ import annotations

import sys

import pytest

from basinscope.errors import BasinscopeError
from basinscope.models import MODELS, bert, build_model


def test_bert_is_a_built_in_model():
    assert MODELS["bert"] is bert
    with pytest.raises(
        BasinscopeError, match=r"expected a built-in name \(bert, deep_linear, lenet, mlp"
    ):
        build_model("bret")


def test_missing_transformers_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(
        BasinscopeError,
        match=r"the model bert needs the transformers package, which is not installed .*"
        r"pip install 'basinscope\[transformers\]'",
    ):
        build_model("bert")
    with pytest.raises(BasinscopeError, match="transformers package"):
        bert()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": 2.5}, "vocab_size must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"num_labels": 3}, r"does not accept the kwargs .*num_classes"),
    ],
)
def test_bert_arguments_are_checked_before_anything_is_built(kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        build_model("bert", kwargs)
