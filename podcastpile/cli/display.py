"""Terminal output that shows user-supplied and remote text exactly as it is.

URLs, file lines, error reasons and transcripts come from outside. Printed as Rich strings they
would be read as markup (`[/red]` crashes, `[bold]` vanishes, `http://[fd00::1]/x` loses its
host), as emoji codes (`:x:`) and, raw, their control characters (ESC, CR) could rewrite the
screen. Everything the commands print goes through these consoles and `literal()`: markup only
in the command's own fixed words, outside text as `Text` with control characters escaped.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.text import Text

# No emoji codes and no automatic highlighting anywhere: both would rewrite outside text.
console = Console(emoji=False, highlight=False)
errors = Console(stderr=True, emoji=False, highlight=False)

# C0 and C1 control characters, DEL, and the Unicode controls that move or reorder what
# follows them (line/paragraph separators, bidirectional overrides).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """`text` with every control character written as its escape (`\\x1b`, `\\r`, `\\u202e`)."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def literal(value: object, style: str = "") -> Text:
    """`value` as text Rich prints literally: no markup, no emoji codes, control characters escaped."""
    return Text(escape_controls(str(value)), style=style)


def say(message: object, *, style: str = "") -> None:
    """Print one line of outside text literally on stdout (long lines are left to the terminal)."""
    console.print(literal(message, style), soft_wrap=True)


def tell(label: str, message: object, *, style: str) -> None:
    """Print `label: message` on stderr: the label in `style`, the message literally."""
    errors.print(Text.assemble((f"{label}:", style), " ", literal(message)), soft_wrap=True)
