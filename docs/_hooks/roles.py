"""MkDocs hook: render the Sphinx roles of d2lx's docstrings as plain code.

The docstrings use reStructuredText roles (``:class:`d2lx.data.ArrayOps```)
that mkdocstrings shows literally; this strips the ``:class:`` prefix from the
rendered HTML so only the code span remains.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(r"\1", html)
