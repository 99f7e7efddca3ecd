"""Keyboard shortcuts: a key press clicks a button of the page, unless the person is typing.

Streamlit has no keyboard API for the page itself. Like the ``streamlit-shortcuts``
component, this registers one ``keydown`` listener in the app's document (through
``st.components.v1.html``, Streamlit's own API) that clicks the button whose widget
key a shortcut names. Unlike it, keys pressed while typing in a text field,
number box or picker are left alone, so ``1`` in the page-number box types a 1.
The map is replaced on every run, so a shortcut always acts on what the page shows now.
"""

from __future__ import annotations

import json

import streamlit.components.v1 as components

_SCRIPT = """<script>
const doc = window.parent.document, host = window.parent;
host.__productlensKeys = %s;
if (!host.__productlensKeysListening) {
  host.__productlensKeysListening = true;
  doc.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
    if (typing || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const widget = (host.__productlensKeys || {})[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    const button = widget && doc.querySelector(`.st-key-${widget} button`);
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  });
}
</script>"""


def keyboard_shortcuts(shortcuts: dict[str, str]) -> None:
    """Make each key (``"1"``, ``"x"``, ``"?"``, ``"ArrowRight"``, ``"Enter"``) click the button of that widget key."""
    components.html(_SCRIPT % json.dumps(shortcuts), height=0, width=0)
