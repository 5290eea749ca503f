"""Errors meant to reach the user as one line, not as a traceback."""


class ConfigError(ValueError):
  """A configuration or input problem detected before compiling; its message is the whole story."""


def require(condition: bool, message: str) -> None:
  """Raises ConfigError(message) unless `condition`."""
  if not condition:
    raise ConfigError(message)
