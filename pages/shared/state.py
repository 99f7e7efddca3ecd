"""Names of the values the app keeps per browser session in ``st.session_state``.

One place for every key, so pages never disagree on a spelling and a new
engineer sees at a glance what a session remembers.
"""

ROUTED = "routed"                    # app.py has run in this session: pages go through its router
ACCOUNT = "account"                  # the signed-in account's name (workspaces with accounts)
AUTHOR = "author"                    # without accounts: the name recorded with every label change
AUTHOR_INPUT = "author_input"        # the sidebar widget holding it while typed
NOTICE = "notice"                    # one-line result of the last action, shown once as a toast
CONFLICTS = "conflicts"              # changes not applied because someone else was quicker
ERROR = "error"                      # a one-line error from the last action (e.g. a name that is too long)
LAST_UPLOAD = "last_upload"          # Upload page: the result of the last upload
TRAINED_VERSION = "trained_version"  # Train page: the version the last retrain made
SUSPICIOUS = "suspicious"            # Suspicious labels page: the last check's (issues, statistics)
REVIEW_ORDER = "review_order"
REVIEW_STATUS = "review_status"
REVIEW_DISAGREE = "review_disagree"
REVIEW_NEW_CATEGORY = "review_new_category"
REVIEW_UNDER = "review_under"
TRAIN_LEVEL = "train_level"          # Train page: the category-tree level of the confusion matrix
REVIEW_CONFIDENCE = "review_confidence"
REVIEW_PAGE = "review_page"
REVIEW_FOCUS = "review_focus"        # the product id of the card the keyboard acts on
REVIEW_KEYS = "review_keys"          # whether the list of keyboard shortcuts is open
EXPLORE_COLOUR = "explore_colour"
SIMILAR_SOURCE = "similar_source"
SIMILAR_PRODUCT = "similar_product"
SIMILAR_SEARCH = "similar_search"  # the text a big catalogue's product picker searches for
SIMILAR_UPLOAD = "similar_upload"


def other_category(product_id: int) -> str:
    """The "Other category…" picker of a Review card."""
    return f"any-{product_id}"


def selected_card(product_id: int) -> str:
    """The checkbox key of a Review card, read back by the bulk actions."""
    return f"select-{product_id}"
