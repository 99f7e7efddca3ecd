"""Who may do what in a workspace: accounts with hashed passwords and three roles.

See :mod:`core.security.accounts`. A workspace without accounts is a one-person
workspace on a laptop: whoever runs it is trusted with everything. Once an
account exists, every browser session signs in and every action is checked
against the signed-in account's role.
"""

from core.security.accounts import (
    ACTIONS,
    LOCAL,
    ROLES,
    Account,
    SignInThrottle,
    add_user,
    authenticate,
    change_password,
    change_role,
    clean_user_name,
    remove_user,
    require,
)

__all__ = ["ACTIONS", "LOCAL", "ROLES", "Account", "SignInThrottle", "add_user", "authenticate", "change_password",
           "change_role", "clean_user_name", "remove_user", "require"]
