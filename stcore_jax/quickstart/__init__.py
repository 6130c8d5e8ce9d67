"""The ``stcore-jax quickstart`` job and its embedded data (see ``data.py`` and ``job.py``)."""
