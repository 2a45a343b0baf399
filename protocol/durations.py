"""How a duration reads on the console: H:MM:SS. Standard library only."""
from __future__ import annotations


def format_duration(seconds: float | None) -> str:
    """Whole seconds as H:MM:SS (hours unbounded, a negative duration as 0:00:00); "?" for None."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
