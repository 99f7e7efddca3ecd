"""Photos in a Plotly map's hover: point -> image linking, which Plotly's own tooltips cannot do.

Plotly tooltips are text. Like :mod:`pages.shared.keys`, this adds one script to
the app's document (``st.html(..., unsafe_allow_javascript=True)``): it listens to
the map's ``plotly_hover`` events and shows the hovered product's photo in a small
box beside the pointer. The photos travel with the script as ``data:image/jpeg``
URLs keyed by product id (the map's points carry the id as their first custom
data); anything else is dropped, so no user text ever reaches the script.
"""

from __future__ import annotations

import json
import re

import streamlit as st

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/jpeg;base64,[A-Za-z0-9+/=]+$")
_SCRIPT = """<script>
window.__productlensMapPhotos = window.__productlensMapPhotos || {};
window.__productlensMapPhotos[%(chart)s] = %(photos)s;
if (!window.__productlensMapPhotosWatching) {
  window.__productlensMapPhotosWatching = true;
  const box = document.createElement("div");
  box.id = "productlens-map-photo";
  box.style.cssText = "position:fixed;display:none;z-index:100000;pointer-events:none;padding:4px;" +
    "background:white;border:1px solid #ccc;border-radius:6px;box-shadow:0 2px 8px rgba(0,0,0,.25)";
  const image = document.createElement("img");
  image.style.cssText = "display:block;max-width:96px;max-height:96px";
  box.appendChild(image);
  document.body.appendChild(box);
  setInterval(() => {
    for (const chart of Object.keys(window.__productlensMapPhotos)) {
      const plot = document.querySelector(`.st-key-${chart} .js-plotly-plot`);
      if (!plot || !plot.on || plot.__productlensHover) continue;
      plot.__productlensHover = true;
      plot.on("plotly_hover", (event) => {
        const point = event.points && event.points[0];
        const id = point && point.customdata && point.customdata[0];
        const url = (window.__productlensMapPhotos[chart] || {})[String(id)];
        if (!url || !url.startsWith("data:image/jpeg;base64,")) { box.style.display = "none"; return; }
        image.src = url;
        const x = event.event ? event.event.clientX : 0, y = event.event ? event.event.clientY : 0;
        // Centred above the pointer: Plotly's own label sits beside the point, at its height.
        box.style.left = Math.max(8, Math.min(x - 52, window.innerWidth - 120)) + "px";
        box.style.top = (y - 150 >= 8 ? y - 150 : y + 36) + "px";
        box.style.display = "block";
      });
      plot.on("plotly_unhover", () => { box.style.display = "none"; });
    }
  }, 300);
}
</script>"""


def hover_photos(chart_key: str, photos: dict[int, str | None]) -> None:
    """Show ``photos[product_id]`` (``data:image/jpeg`` URLs) when the pointer rests on that product's point."""
    if not _SAFE_KEY.match(chart_key):
        raise ValueError(f"chart key {chart_key!r}: letters, digits, '_' and '-' only")
    safe = {str(int(pid)): url for pid, url in photos.items() if url and _DATA_URL.match(url)}
    st.html(_SCRIPT % {"chart": json.dumps(chart_key), "photos": json.dumps(safe)}, unsafe_allow_javascript=True)
