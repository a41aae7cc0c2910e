"""Keep a report page a few MB at most: link its largest figures instead of embedding them.

The report embeds every figure as a base64 PNG (one file to mail), and writes the same PNGs beside
``report.html``. When the page would exceed a size limit, :func:`fit_page` replaces the largest
embedded figures, one at a time until the page fits, by relative links to those files: the page
still opens offline from its folder, and small figures stay embedded. A figure is recognised by its
bytes (the sha256 of the decoded data against the folder's PNGs), so any section's figures can be
linked without it knowing about the limit; one with no file beside the page stays embedded.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

#: default size limit of ``report.html`` in bytes: above it, figures are linked
EMBED_LIMIT = 3_000_000

_DATA = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def fit_page(page: str, folder: Path, limit: int = EMBED_LIMIT) -> tuple[str, list[str]]:
    """``page`` with its largest embedded figures linked to their PNG files in ``folder`` until it is at
    most ``limit`` bytes (or nothing more can be linked), and the names of the linked files."""
    size = len(page.encode())
    if size <= limit:
        return page, []
    files = {hashlib.sha256(p.read_bytes()).hexdigest(): p.name for p in sorted(folder.glob("*.png"))}
    found = {}
    for data in sorted({m.group(1) for m in _DATA.finditer(page)}, key=len, reverse=True):
        name = files.get(hashlib.sha256(base64.b64decode(data)).hexdigest())
        if name is not None and size > limit:
            found[data] = name
            size -= page.count(data) * (len(data) - len(name))
    page = _DATA.sub(lambda m: (f"src='{html.escape(found[m.group(1)])}'" if m.group(1) in found else m.group(0)),
                     page)
    return page, sorted(found.values())


def linked_note(names: list[str], limit: int) -> str:
    """The sentence at the top of a page whose figures ``names`` are linked, not embedded."""
    if not names:
        return ""
    return (f"<p class='note'>To keep this page under {limit / 1e6:.1f} MB, {len(names)} figure(s) are shown from "
            f"the PNG files beside it ({html.escape(', '.join(names))}): keep the report folder together when "
            "moving or mailing it.</p>")
