"""The one exception a bad configuration raises."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is allowed."""
