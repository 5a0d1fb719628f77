"""Errors a user can act on.

Anything raised as :class:`FedmedError` is printed by the CLI as one line (no
traceback) and turns into a non-zero exit code, so messages must name the file or
value that is wrong and what was expected.
"""


class FedmedError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataError(FedmedError):
    """A data file or folder is missing, unreadable or malformed."""


class ConfigError(FedmedError):
    """A configuration value (task, strategy, federation option) is invalid."""


class PrivacyRefusal(FedmedError):
    """A site refuses a round: it would break the site's privacy policy or budget."""
