"""User text (category, file and user names) inside Markdown or a chart, shown as the plain text it is.

Streamlit renders captions, notices and labels as Markdown. A category called
``**Sale** [click](http://…)`` must show those characters, not bold text and a
link: :func:`plain` escapes every character Markdown gives a meaning to.
"""

import html
import re

# Characters that format text inline (emphasis, code, links, HTML, maths, tables, Streamlit's
# :colour[...] and :icon: directives), and list or heading markers at the start.
_INLINE = re.compile(r"([\\`*_\[\]<>~$|:#])")
_LEADING = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")


def plain(text: object) -> str:
    """``text`` with Markdown's special characters escaped, so it renders exactly as written."""
    escaped = _INLINE.sub(r"\\\1", str(text).replace("\n", " "))
    # "- x" becomes "\- x", "1. x" becomes "1\. x": either way no list.
    return _LEADING.sub(lambda match: match.group(1) + (match.group(2) + "\\" if match.group(2)[0].isdigit()
                                                       else "\\" + match.group(2)), escaped)


def chart_text(text: object) -> str:
    """User text for a Plotly chart (legend, axis, hover), which renders HTML tags such as ``<a href>``."""
    return html.escape(str(text), quote=False)


# How a "new category?" prediction flag reads on every page (core.model.novelty).
NEW_CATEGORY = "⚠ New category? Nothing labelled looks like this product."
NEW_CATEGORY_HELP = ("The model only knows the categories it was trained on and shares its confidence among "
                     "them. Taken together, how far this product is from every labelled category and how unsure "
                     "the model is of it go beyond what labelled products it was tested on reach, so it may "
                     "belong to a category nobody has labelled yet. Bulk accept skips it.")
