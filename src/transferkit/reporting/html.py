"""Self-contained HTML pages: Jinja2 templates, figures embedded as data URIs, number formats.

Nothing in a page refers to the network or to another file: styles are inline, images are data URIs and the
fonts are the system's, so a report can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import io
import warnings
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import jinja2
from matplotlib.figure import Figure

from ..atomic import write_atomic
from .figures import plain_text


@dataclass(frozen=True)
class Image:
    """An embedded picture: its data URI and the text that stands for it."""

    src: str
    alt: str


def figure_image(fig: Figure, alt: str) -> Image:
    """A matplotlib figure as SVG (sharp at any zoom, text drawn as paths so no font is needed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        plain_text(fig).savefig(buf, format="svg")
    return Image("data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), alt)


def png_image(path: Path, alt: str) -> Image | None:
    """A PNG of the run folder, or None when the run has none (older runs, phases not reached)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):  # a damaged file would be a broken picture
        return None
    return Image("data:image/png;base64," + base64.b64encode(data).decode("ascii"), alt)


def percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def shape(output_shape: tuple[int, ...] | list[int]) -> str:
    """Keras' notation, the batch dimension as None: (None, 32, 26, 26)."""
    return "(" + ", ".join(["None", *map(str, output_shape)]) + ")"


def render(template: str, **context: object) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("transferkit.reporting", "templates"),
        autoescape=True,  # class names and paths come from the user's files
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(percent=percent, duration=duration, shape=shape, thousands=lambda n: f"{n:,}")
    return env.get_template(template).render(**context)


def write_html(path: Path, html: str) -> Path:
    write_atomic(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path


def open_in_browser(path: Path) -> bool:
    """Open the page in the default browser; False when there is none (a server, a container)."""
    return webbrowser.open(Path(path).resolve().as_uri())
