"""The ``stcore-jax`` command line (``python -m stcore_jax.cli`` works too)."""

from stcore_jax.cli.main import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
