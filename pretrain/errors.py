"""Errors meant to reach the user as one line, not as a traceback."""


class ConfigError(ValueError):
  """A configuration or input problem detected before compiling; its message is the whole story."""
