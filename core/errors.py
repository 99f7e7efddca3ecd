"""The one exception family for failures a user can fix.

Every error whose message tells a person what to do (an empty catalogue, a
category name that is too long, a backbone whose weights cannot be found)
derives from :class:`ProductLensError`. The command line prints exactly these
as a one-line ``error: …`` with exit code 2, and the app shows them as a short
message; anything else is a bug and is allowed to surface with its traceback.
Subclasses that also derive from a builtin (``ValueError``, ``LookupError``)
keep working with code that catches the builtin.
"""

from __future__ import annotations


class ProductLensError(Exception):
    """A failure the user can fix; the message says how, in one line."""


class CatalogError(ProductLensError):
    """The workspace cannot be used as it is (missing, newer, damaged, not empty)."""


class InvalidInputError(ProductLensError, ValueError):
    """A value given by a person (a name, a threshold, a setting, a file type) is not acceptable."""


class NotFoundError(ProductLensError, LookupError):
    """The product, model version or embedding asked for does not exist (yet)."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class TrainingError(ProductLensError, ValueError):
    """Not enough labelled, embedded products to train; the message says what is missing."""


class BackboneUnavailableError(ProductLensError):
    """The backbone's weights cannot be loaded here (offline, missing or damaged file)."""


class ImageError(ProductLensError, ValueError):
    """A file that cannot be imported as a photo; the message is the reason shown to the user."""


class AccessDeniedError(ProductLensError, PermissionError):
    """Wrong name or password, too many attempts, or an action the account's role does not allow."""
