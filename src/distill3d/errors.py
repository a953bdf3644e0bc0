"""Exceptions that carry a message meant for the user (shown without a traceback by the CLI)."""


class Distill3DError(Exception):
    """Base class of errors whose message says what is wrong and where."""


class ConfigError(Distill3DError, ValueError):
    """A config file, key or override is invalid."""
