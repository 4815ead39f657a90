"""Text from a store (or the command line) on its way to a terminal, a plot or a page.

Class, model, split and file names come from stores people share: they may hold rich markup (``[/]``,
``[bold red]``), terminal escape sequences or mathtext (``$``). Every such string goes through one of these
functions before it is shown. (HTML uses :func:`html.escape`; plots are drawn with mathtext parsing off.)
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["markup", "printable"]

# C0/C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` with control characters written as visible escapes (``\\x1b``), never emitted raw.

    Example:
        >>> printable("a\\x1b[2Jb")
        'a\\\\x1b[2Jb'
    """
    s = str(text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", s)


def markup(text: Any) -> str:
    """``text`` safe inside a rich markup string: control characters escaped, ``[`` … ``]`` shown literally.

    Example:
        >>> markup("run[lr=0.1]")
        'run\\\\[lr=0.1]'
    """
    from rich.markup import escape

    return escape(printable(text))
