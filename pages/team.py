"""Team: the workspace's accounts and roles; admins add people, change roles and remove accounts."""

import streamlit as st

from core.errors import ProductLensError
from core.security import ROLES, add_user, change_role, remove_user
from pages.shared import account, can, catalog, permitted, remember, require_router, show_notices
from pages.shared.text import plain

require_router()

ROLE_HELP = {"viewer": "looks at everything, changes nothing",
             "labeller": "also uploads photos, labels, and undoes their own actions",
             "admin": "also trains and activates models, renames and merges categories, archives and "
                      "restores products, manages accounts"}

st.title("Team")
for role in ROLES:
    st.caption(f"**{role}**: {ROLE_HELP[role]}")
if not catalog().has_accounts():
    st.info("No accounts yet: whoever opens this app can do everything. Create the first admin on the server "
            "with `python -m core users add NAME --role admin`; from then on everyone signs in.")
    st.stop()
show_notices()
st.dataframe(catalog().users(), hide_index=True, width="stretch")
if not can("manage_users"):
    st.caption("Adding people and changing roles is for admins.")
    st.stop()


def _apply(action, message, *args) -> None:
    if not permitted("manage_users"):
        return
    try:
        action(catalog(), *args)
    except ProductLensError as error:
        st.error(plain(error))
    else:
        remember(message)
        st.rerun()


columns = st.columns(2)
with columns[0].form("add-account", clear_on_submit=True):
    st.subheader("Add a person")
    name = st.text_input("Account name", help="No spaces; shown in the label history.")
    password = st.text_input("First password", type="password", help="At least 8 characters; "
                             "they can change it with `python -m core users passwd NAME`.")
    role = st.selectbox("Role", ROLES, index=None, placeholder="Choose a role")
    if st.form_submit_button("Add", type="primary") and role:
        _apply(add_user, f"Added {plain(name)} as {role}.", name, password, role)
with columns[1].form("change-account"):
    st.subheader("Change or remove")
    others = [user["name"] for user in catalog().users() if user["name"] != account().name]
    who = st.selectbox("Account", others, index=None, placeholder="Choose an account")
    new_role = st.selectbox("New role", ROLES, index=None, placeholder="Keep the role")
    remove = st.checkbox("Remove this account (their history stays)")
    if st.form_submit_button("Apply") and who:
        if remove:
            _apply(remove_user, f"Removed {plain(who)}.", who)
        elif new_role:
            _apply(change_role, f"{plain(who)} is now {new_role}.", who, new_role)
