"""Strict reading of the numbers a user types: an empty or malformed box is an error naming that field.

A browser number box and `float()` forgive too much ("40O" read as 40, an empty box as the default); the app
shows numbers in text boxes and reads them here, so what runs is exactly what was typed.
"""

from __future__ import annotations

import math
import re

from sdlora.errors import SdloraError

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_number(value, what: str, kind: str = "float", optional: bool = False):
    """`value` (a widget's text or number) as an int or float; `None` for an empty optional field.

    `what` names the field in the error (its preset key or label), `kind` is "int" or "float".
    """
    if isinstance(value, bool):
        raise SdloraError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = value
    else:
        text = "" if value is None else str(value).strip()
        if not text:
            if optional:
                return None
            raise SdloraError(f"{what}: the field is empty; type a {'whole ' if kind == 'int' else ''}number")
        if kind == "int" and _INT.match(text):
            return int(text)
        if not _FLOAT.match(text):
            whole = "a whole number" if kind == "int" else "a number (e.g. 0.5 or 1e-4)"
            raise SdloraError(f"{what}: {text!r} is not {whole}")
        number = float(text)
    if isinstance(number, float) and not math.isfinite(number):
        raise SdloraError(f"{what}: {number} is not a finite number")
    if kind == "int":
        if isinstance(number, float) and not number.is_integer():
            raise SdloraError(f"{what}: {value!r} is not a whole number")
        return int(number)
    return float(number)
