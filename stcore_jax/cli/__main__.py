from stcore_jax.cli.main import entry_point

entry_point()
