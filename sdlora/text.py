"""Text from files (metadata, captions, file names) made safe to print on a terminal.

A metadata value or a caption can hold ESC sequences, carriage returns or newlines; printed raw they clear the
screen, move the cursor or forge whole lines of output. `printable` writes every control character as a visible
escape (`\\x1b`, `\\r`, `\\n`), so what is shown is what the file holds.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls (U+0080-U+009F: 0x9b is a one-byte CSI on some terminals), and the Unicode
# line and paragraph separators and bidirectional overrides, which reorder or break what follows them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as a string with every control character escaped."""
    return _CONTROL.sub(_escape, str(text))
