"""The errors the pipeline raises on purpose, with no import of their own.

At the very bottom so that the lowest modules (reading config files, the mapping, binding it
to the database) can raise them; ``errors`` names them too and describes any error.
"""

from __future__ import annotations


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


class BusyError(RegularizationError):
    """Another run holds this shop's run lock, or is queued or in progress: nothing was changed."""


class RunLockLostError(BusyError):
    """The run's lock went away under it (the server dropped its session): the run stopped before
    deciding another order, since another run may now be deciding them."""
