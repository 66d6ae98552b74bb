"""Notes: the user's free text on a run or a candidate (pages, API, run lists and the CSV)."""

from __future__ import annotations

from searches import events
from searches.models import Candidate, SearchRun

# The model fields' own limit (TextField max_length), checked by the form and the API.
MAX_LENGTH = 2000


def set_notes(row: SearchRun | Candidate, text: str) -> None:
    """Save ``text`` (trimmed) as the row's notes; open dashboards show a candidate's at once."""
    row.notes = text.strip()
    row.save(update_fields=["notes"])
    if isinstance(row, Candidate):
        events.candidate_changed(row)
