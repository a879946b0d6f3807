"""Errors the pipeline raises on purpose, each with a message an operator can act on."""


class RegularizationError(Exception):
    """Base class for errors that stop a run before it changes anything."""


class ConfigurationError(RegularizationError, ValueError):
    """Invalid run options or schema mapping; names the offending field."""


class SchemaMismatchError(RegularizationError):
    """The schema mapping names a table or column the database does not have."""


class MigrationsMissingError(RegularizationError):
    """This project's own tables are absent or behind; run `regularize-completed-orders migrate`."""


class DatabaseUnavailableError(RegularizationError):
    """The application database cannot be reached."""
