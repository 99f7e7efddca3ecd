"""Accounts: hashed passwords, roles, the last admin, and password guessing slowed down."""

import pytest

from core.errors import AccessDeniedError, InvalidInputError
from core.security import (
    LOCAL,
    Account,
    SignInThrottle,
    add_user,
    authenticate,
    change_password,
    change_role,
    remove_user,
    require,
)
from core.storage import Catalog

# Runs on SQLite and on a real PostgreSQL server (conftest.database).
pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture()
def catalog(tmp_path):
    catalog = Catalog(tmp_path / "ws")
    add_user(catalog, "root", "first-admin-pw", "admin")
    return catalog


def test_passwords_are_stored_as_argon2id_hashes_and_checked(catalog):
    add_user(catalog, "alice", "correct horse", "labeller")
    stored, role = catalog.user_password_hash("alice")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored and role == "labeller"
    if catalog.is_sqlite:
        wal = catalog.database_path.with_name("catalog.sqlite-wal")
        raw = catalog.database_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    else:
        with catalog.transaction() as connection:
            raw = repr(connection.exec_driver_sql("SELECT * FROM users").all()).encode()
        assert b"$argon2id$" in raw
    assert b"correct horse" not in raw
    assert authenticate(catalog, "alice", "correct horse") == Account("alice", "labeller")
    for name, password in [("alice", "wrong password"), ("nobody", "correct horse"), ("alice", "")]:
        with pytest.raises(AccessDeniedError, match="^wrong account name or password$"):
            authenticate(catalog, name, password)
    change_password(catalog, "alice", "battery staple")
    with pytest.raises(AccessDeniedError):
        authenticate(catalog, "alice", "correct horse")
    assert authenticate(catalog, "alice", "battery staple").role == "labeller"


def test_roles_allow_what_the_issue_says():
    viewer, labeller, admin = (Account("v", "viewer"), Account("l", "labeller"), Account("a", "admin"))
    assert viewer.can("view") and not viewer.can("label") and not viewer.can("undo")
    assert labeller.can("label") and labeller.can("undo") and labeller.can("import")
    for action in ("train", "activate", "rename", "archive", "manage_users"):
        assert admin.can(action) and not labeller.can(action) and not viewer.can(action)
    assert LOCAL.can("manage_users"), "without accounts the one local user may do everything"
    with pytest.raises(AccessDeniedError, match="v is a viewer: label needs the labeller role"):
        require(viewer, "label")
    require(labeller, "label")


def test_account_names_and_passwords_are_checked(tmp_path, catalog):
    with pytest.raises(InvalidInputError, match="first account must be an admin"):
        add_user(Catalog(tmp_path / "other", database="sqlite"), "alice", "long enough", "labeller")
    for name in ["", "a b", "x" * 65, "bad\nname", "esc\x1b[31m"]:
        with pytest.raises(InvalidInputError):
            add_user(catalog, name, "long enough", "viewer")
    with pytest.raises(InvalidInputError, match="at least 8"):
        add_user(catalog, "bo", "short", "viewer")
    with pytest.raises(InvalidInputError, match="role must be one of"):
        add_user(catalog, "bo", "long enough", "superuser")
    with pytest.raises(InvalidInputError, match="already exists"):
        add_user(catalog, "root", "long enough", "viewer")


def test_the_last_admin_cannot_be_removed_or_demoted(catalog):
    add_user(catalog, "alice", "long enough", "labeller")
    for attempt in (lambda: remove_user(catalog, "root"), lambda: change_role(catalog, "root", "viewer")):
        with pytest.raises(InvalidInputError, match="only admin"):
            attempt()
    change_role(catalog, "alice", "admin")
    remove_user(catalog, "root")
    assert [(user["name"], user["role"]) for user in catalog.users()] == [("alice", "admin")]


def test_password_guessing_is_throttled_per_account(catalog):
    throttle = SignInThrottle(max_failures=3, window=60)
    for _ in range(3):
        with pytest.raises(AccessDeniedError, match="wrong"):
            throttle.authenticate(catalog, "root", "guess")
    with pytest.raises(AccessDeniedError, match="too many wrong passwords"):
        throttle.authenticate(catalog, "root", "first-admin-pw")  # even the right one, until the window passes
    add_user(catalog, "alice", "long enough", "viewer")
    assert throttle.authenticate(catalog, "alice", "long enough").name == "alice", "other accounts unaffected"
    assert SignInThrottle(max_failures=3, window=0).authenticate(catalog, "root", "first-admin-pw").role == "admin"
