"""Accounts, roles and the permission check every action goes through.

Passwords are stored only as argon2id hashes (``argon2-cffi``, the Password
Hashing Competition winner, with its recommended parameters). Three roles, each
allowed what the one before it may do and more: a *viewer* looks; a *labeller*
also imports photos, labels and undoes their own actions; an *admin* also
trains and activates models, renames and merges categories, archives and
restores products and manages accounts. :func:`require` is the one check; the
pages hide what a role cannot do, and the check still runs when the action does.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.errors import AccessDeniedError, InvalidInputError
from core.storage.catalog import ROLES, Catalog

MIN_PASSWORD_LENGTH = 8
MAX_USER_NAME_LENGTH = 64
# What each role may do, cumulatively (viewer < labeller < admin).
ACTIONS = {
    "view": "viewer",
    "label": "labeller",
    "undo": "labeller",
    "import": "labeller",
    "train": "admin",
    "activate": "admin",
    "rename": "admin",
    "archive": "admin",
    "manage_users": "admin",
}

_hasher = PasswordHasher()
# Verifying against this when the name is unknown makes a wrong name cost as long as a wrong password,
# so timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True)
class Account:
    """Who is acting: an account's ``name`` and ``role``; ``signed_in`` is False for the local user."""

    name: str | None
    role: str
    signed_in: bool = True

    def can(self, action: str) -> bool:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {sorted(ACTIONS)}")
        return ROLES.index(self.role) >= ROLES.index(ACTIONS[action])


# A workspace without accounts: one trusted local user, who may do everything.
LOCAL = Account(name=None, role="admin", signed_in=False)


def require(account: Account, action: str) -> None:
    """Raise :class:`AccessDeniedError` unless ``account`` may do ``action``."""
    if not account.can(action):
        needed = ACTIONS[action]
        raise AccessDeniedError(f"{account.name} is a {account.role}: {action.replace('_', ' ')} needs the "
                                f"{needed} role (ask an admin: `python -m core users role {account.name} {needed}`)")


def clean_user_name(name: str) -> str:
    """An account name as stored: stripped, printable, without spaces, at most 64 characters."""
    name = str(name or "").strip()
    if not name:
        raise InvalidInputError("an account name cannot be empty")
    if len(name) > MAX_USER_NAME_LENGTH:
        raise InvalidInputError(f"an account name can be at most {MAX_USER_NAME_LENGTH} characters")
    if any(not character.isprintable() or character.isspace() for character in name):
        raise InvalidInputError("an account name cannot contain spaces or control characters")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _hash(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def add_user(catalog: Catalog, name: str, password: str, role: str) -> Account:
    name, role = clean_user_name(name), _check_role(role)
    if not catalog.has_accounts() and role != "admin":
        # The first account must be able to manage the others, or nobody could.
        raise InvalidInputError("the first account must be an admin: add it with --role admin")
    catalog.add_user(name, _hash(password), role)
    return Account(name, role)


def change_password(catalog: Catalog, name: str, password: str) -> None:
    catalog.update_user(clean_user_name(name), password_hash=_hash(password))


def change_role(catalog: Catalog, name: str, role: str) -> None:
    name, role = clean_user_name(name), _check_role(role)
    if role != "admin":
        _keep_an_admin(catalog, name)
    catalog.update_user(name, role=role)


def remove_user(catalog: Catalog, name: str) -> None:
    name = clean_user_name(name)
    if len(catalog.users()) > 1:
        _keep_an_admin(catalog, name)
    catalog.remove_user(name)


def _keep_an_admin(catalog: Catalog, leaving: str) -> None:
    admins = [user["name"] for user in catalog.users() if user["role"] == "admin"]
    if admins == [leaving]:
        raise InvalidInputError(f"{leaving} is the only admin: make someone else admin first")


def authenticate(catalog: Catalog, name: str, password: str) -> Account:
    """The account for ``name`` and ``password``; :class:`AccessDeniedError` otherwise (same message either way)."""
    stored = catalog.user_password_hash(str(name or "").strip())
    try:
        _hasher.verify(stored[0] if stored else _DUMMY_HASH, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        stored = None
    if stored is None:
        raise AccessDeniedError("wrong account name or password")
    name = str(name).strip()
    if _hasher.check_needs_rehash(stored[0]):
        catalog.update_user(name, password_hash=_hasher.hash(password))
    return Account(name, stored[1])


class SignInThrottle:
    """Slows password guessing: after ``max_failures`` wrong passwords for a name within ``window`` seconds,
    that name cannot sign in until the oldest failure is ``window`` seconds old."""

    def __init__(self, max_failures: int = 5, window: float = 300.0):
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def authenticate(self, catalog: Catalog, name: str, password: str) -> Account:
        key = str(name or "").strip().lower()
        with self._lock:
            failures = self._failures[key]
            now = time.monotonic()
            while failures and now - failures[0] > self.window:
                failures.popleft()
            if len(failures) >= self.max_failures:
                wait = int(self.window - (now - failures[0])) + 1
                raise AccessDeniedError(f"too many wrong passwords for this account: try again in {wait} s")
        try:
            return authenticate(catalog, name, password)
        except AccessDeniedError:
            with self._lock:
                self._failures[key].append(time.monotonic())
            raise


__all__ = ["ACTIONS", "LOCAL", "ROLES", "Account", "SignInThrottle", "add_user", "authenticate",
           "change_password", "change_role", "clean_user_name", "remove_user", "require"]
