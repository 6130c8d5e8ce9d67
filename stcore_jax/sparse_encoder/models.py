"""sentence-transformers 5.x's ``sparse_encoder.models`` import path: the same names as
:mod:`stcore_jax.sparse_encoder.modules`."""

from stcore_jax.sparse_encoder.modules import *  # noqa: F401,F403
from stcore_jax.sparse_encoder.modules import __all__  # noqa: F401
