"""The shipped Streamlit configuration: what a visitor of `streamlit run app.py` can reach and see.

That the server really listens on loopback only is checked on a running server in
tests/test_browser.py; these are the settings behind it, read the way Streamlit reads them.
"""

import tomllib

from conftest import REPO


def test_the_app_serves_this_computer_only_and_hides_error_details():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    # "type": visitors see the exception's type only; tracebacks and server paths go to the server log.
    assert config["client"]["showErrorDetails"] == "type"
    assert config["client"]["toolbarMode"] == "viewer"
