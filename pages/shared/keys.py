"""Keyboard shortcuts: a key press clicks a button of the page, unless the person is typing.

Streamlit has no keyboard API for the page itself. Like the ``streamlit-shortcuts``
component, this registers one ``keydown`` listener in the app's document (here with
Streamlit's own ``st.html(..., unsafe_allow_javascript=True)``) that clicks the
button whose widget key a shortcut names. Unlike it, keys pressed while typing in
a text field, number box or picker are left alone, so ``1`` typed into the
page-number box is a 1. Give the map fixed widget keys (the focused card's
buttons, not a product's): the browser may keep an unchanged script from an
earlier run. Only widget keys made of letters, digits and ``-`` are accepted: the
map is code, and no user text may reach it.
"""

from __future__ import annotations

import json
import re

import streamlit as st

_SAFE_KEY = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_KEY_NAMES = re.compile(r"^([0-9a-z?]|Enter|Escape|ArrowLeft|ArrowRight|ArrowUp|ArrowDown)$")
_SCRIPT = """<script>
window.__productlensKeys = %s;
if (!window.__productlensKeysListening) {
  window.__productlensKeysListening = true;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
    if (typing || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const widget = (window.__productlensKeys || {})[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    const button = widget && document.querySelector(`.st-key-${widget} button`);
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  });
}
</script>"""


def keyboard_shortcuts(shortcuts: dict[str, str]) -> None:
    """Make each key (``"1"``, ``"x"``, ``"?"``, ``"ArrowRight"``, ``"Enter"``) click the button of that widget key."""
    for key, widget in shortcuts.items():
        if not _KEY_NAMES.match(key) or not _SAFE_KEY.match(widget):
            raise ValueError(f"shortcut {key!r} -> {widget!r}: keys are one character or a named key, widget keys "
                             "letters, digits and '-'")
    st.html(_SCRIPT % json.dumps(shortcuts), unsafe_allow_javascript=True)
