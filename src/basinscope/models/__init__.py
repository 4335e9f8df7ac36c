"""Models for loss-landscape experiments and loading them from specs and files.

Built in: :func:`mlp`, :func:`lenet` and :func:`resnet` (with ``skip=False`` for the
no-skip networks of Li et al., 2018), all sized by ``in_channels``/``image_size`` to run
on both 8x8 digits and 28x28 MNIST; and :func:`bert`, a small Hugging Face
``BertForSequenceClassification`` made from a config for the built-in token data (needs
``pip install 'basinscope[transformers]'``). :func:`build_model` turns a spec (``"lenet"`` or
``"module:factory"``, e.g. ``"basinscope.models:lenet"``) into a model with a seeded
initialization; :func:`load_weights`, :func:`load_state_dict_file` and
:func:`save_weights` move state dicts to and from ``.safetensors``/``.pt`` files.
"""

from basinscope.models.hf import bert
from basinscope.models.loading import (
    build_model,
    load_state_dict_file,
    load_weights,
    save_weights,
)
from basinscope.models.solvable import (
    conserved_quantities,
    deep_linear,
    end_to_end,
    soft_committee,
    two_layer_relu,
)
from basinscope.models.zoo import MODELS, lenet, mlp, resnet

__all__ = [
    "MODELS",
    "bert",
    "build_model",
    "conserved_quantities",
    "deep_linear",
    "end_to_end",
    "lenet",
    "load_state_dict_file",
    "load_weights",
    "mlp",
    "resnet",
    "save_weights",
    "soft_committee",
    "two_layer_relu",
]
