"""Optional structure validation with hl7apy, per sending facility
(``validate_with_hl7apy`` in ``config/facilities.yaml``).

hl7apy knows every message structure of v2.1–2.8.2; we use it for what it is
good at — does this message have the segments and groups its structure
requires, in an order that fits — and not on any hot path: a parse costs
about 7–8 ms (``hl7/PARSING.md``). Field-level strict validation is not used:
real hospital messages routinely leave "required" fields empty (SCH-6 in
v2.5) and would all be rejected.
"""

from __future__ import annotations

import re
from typing import Any

from hl7.errors import MappingError

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


def validate_structure(text: str) -> None:
    """Raise ``MappingError`` (code 100, segment sequence error) when ``text``
    does not fit its MSH-9 message structure: a required segment or group is
    missing, or a segment could not be placed. Z-segments are allowed anywhere."""
    from hl7apy.parser import parse_message  # imported here: ~0.3 s to load

    lines = [line for line in _SEGMENT_SPLIT.split(text) if line.strip()]
    try:
        message = parse_message("\r".join(lines), find_groups=True)
    except Exception as exc:  # hl7apy raises many unrelated types
        raise MappingError(f"structure not readable by hl7apy: {type(exc).__name__}", "100") from None
    missing = _missing_required(message)
    if missing:
        raise MappingError(f"required segment or group missing: {', '.join(missing)}", "100")
    expected = sum(1 for line in lines if not line.startswith("Z"))
    placed = _count_segments(message)
    if placed < expected:
        raise MappingError(
            f"{expected - placed} segment(s) do not fit structure {message.name}", "100"
        )


def _missing_required(element: Any) -> list[str]:
    missing: list[str] = []
    reference = element.reference
    if not reference or reference[0] not in ("sequence", "choice"):
        return missing
    for child_ref in reference[1]:
        name, (minimum, _), kind = child_ref[0], child_ref[2], child_ref[3]
        if kind not in ("SEG", "GRP"):
            continue
        children = element.children.get(name) or []
        if minimum >= 1 and not children:
            missing.append(name)
        if kind == "GRP":
            for child in children:
                missing.extend(_missing_required(child))
    return missing


def _count_segments(element: Any) -> int:
    total = 0
    for child in element.children:
        if child.classname == "Segment":
            total += 0 if child.name.startswith("Z") else 1
        elif child.classname == "Group":
            total += _count_segments(child)
    return total
