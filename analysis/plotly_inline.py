"""plotly.js inlined once in the report page, packed, and the figures drawn once it is unpacked.

plotly.js is 4.8 MB of minified JavaScript; gzip brings it to 1.5 MB, 2 MB as base64 text. The page carries it in
one ``<script type="application/gzip;base64">``, which the browser does not run; a short loader unpacks it with the
browser's own ``DecompressionStream`` (Chrome 80, Firefox 113, Safari 16.4 and later) and runs it, and each figure
is drawn when that is done. Nothing is fetched, so the page still opens offline. The copy is the installed plotly
package's own, so it always matches the figures' JSON.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json

import plotly.graph_objects as go
import plotly.offline

CONFIG = {"displaylogo": False, "responsive": True}
PACKED_ID = "plotly-js-gzip"

_LOADER = """<script>
const plotlyReady = (async () => {
  const packed = atob(document.getElementById("%(packed_id)s").textContent);
  const unpacked = new Blob([Uint8Array.from(packed, c => c.charCodeAt(0))]).stream()
    .pipeThrough(new DecompressionStream("gzip"));
  const script = document.createElement("script");
  script.textContent = await new Response(unpacked).text();
  document.head.appendChild(script);  // runs plotly.js, which defines Plotly
})();
function drawFigure(id, figure) {
  plotlyReady.then(() => Plotly.newPlot(id, figure.data, figure.layout, %(config)s)).catch(error => {
    document.getElementById(id).textContent = "This browser could not draw the figure (" + error + "); "
      + "the tables below hold the same numbers.";
  });
}
</script>"""


@functools.cache
def _packed_plotly_js() -> str:
    """The installed plotly.js, gzipped (no timestamp: the same bytes every time) and base64-encoded."""
    return base64.b64encode(gzip.compress(plotly.offline.get_plotlyjs().encode(), compresslevel=9, mtime=0)).decode()


def loader_html() -> str:
    """The packed plotly.js and its loader: put it once in the page, before any ``figure_html``."""
    return (f'<script id="{PACKED_ID}" type="application/gzip;base64">{_packed_plotly_js()}</script>\n'
            + _LOADER % {"packed_id": PACKED_ID, "config": json.dumps(CONFIG)})


def figure_html(fig: go.Figure, div_id: str, height: str = "520px") -> str:
    """A figure's ``<div>`` and the call that draws it there once plotly.js is unpacked.

    Args:
        fig: The figure.
        div_id: An id unique in the page.
        height: CSS height of the figure.
    """
    figure = fig.to_json().replace("</", "<\\/")  # "</script>" in a title must not end the script
    return (f'<div id="{div_id}" class="plotly-graph-div" style="height:{height}; width:100%;"></div>\n'
            f'<script>drawFigure("{div_id}", {figure});</script>')
