"""Config handling: the `--config PATH[:ARG] --config.FIELD=VALUE` command line and validation."""
