"""Typed errors. The runner turns each into one line and a non-zero exit."""


class RecsError(Exception):
    """An error the user can act on; its message is shown as it is."""

    exit_code = 2


class ConfigError(RecsError):
    """A configuration file or override is missing, unknown or of the wrong type."""


class InputError(RecsError):
    """Input data is missing or unusable."""


class SchemaError(RecsError):
    """A DataFrame at a stage boundary does not have the promised columns."""


class StageOrderError(RecsError):
    """A stage ran before the stage whose output it reads."""


class RequestError(RecsError):
    """A request names a user, product, model or parameter the service cannot accept."""
