"""One image on the page: its thumbnail (heatmap overlay or the image itself), decision, scores.

:func:`image_card` never fails on a file: a heatmap or image that is missing or unreadable
becomes a note on the card (and the caller counts them for the page's notes).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from patchbank.errors import PatchbankError
from patchbank.report.thumbnails import Thumbnail, thumbnail

HEATMAP_MISSING = "heatmap file missing"
IMAGE_MISSING = "image not found"


@dataclass
class ImageCard:
    """What the page shows of one image.

    ``thumb`` is None when neither the heatmap nor the image could be read (``notes`` says
    why); ``thumb_kind`` is ``"heatmap overlay"`` or ``"image"``; ``label`` is ``"good"`` /
    ``"defective"`` for evaluate images and None for predictions; ``category`` and ``routed``
    are set for a multi-category model's predictions only; ``whole_image``: the whole-image check
    flagged it (its anomaly map's mean above that threshold: whatever its score, a blurred, dark
    or noisy frame; False for records written before the check); ``out_of_focus``: the focus
    check flagged it (blurrier than every training image; False for records written before it).
    """

    rank: int
    path: str
    flagged: bool
    score: float
    normalized_score: float
    threshold: float
    thumb: Thumbnail | None = None
    thumb_kind: str = ""
    notes: list[str] = field(default_factory=list)
    label: str | None = None
    category: str | None = None
    routed: bool | None = None
    whole_image: bool = False
    out_of_focus: bool = False

    @property
    def name(self) -> str:
        """The last two parts of the path (``crack/017.png``): enough to tell images apart."""
        return "/".join(Path(self.path).parts[-2:])


def by_score(records: Iterable[dict[str, Any]], key: str = "normalized_score") -> list[dict[str, Any]]:
    """``records`` sorted by ``key``, highest first; NaN (anomalous by definition) before all;
    equal scores keep their order."""
    return sorted(records, key=lambda r: (not math.isnan(r[key]), -r[key] if not math.isnan(r[key]) else 0.0))


def _try_thumbnail(path: Path, missing: str, notes: list[str]) -> Thumbnail | None:
    """The thumbnail of ``path``, or None with a note (``missing: path`` or the read error)."""
    if not path.is_file():
        notes.append(f"{missing}: {path}")
        return None
    try:
        return thumbnail(path)
    except PatchbankError as exc:
        notes.append(str(exc))
        return None


def image_card(rank: int, rec: dict[str, Any], *, heatmap: Path | None = None,
               label: str | None = None) -> ImageCard:
    """The card of one record (keys as in ``predictions.json`` / a run's ``images``).

    With ``heatmap`` (the overlay file the run wrote) that file's thumbnail is shown; when it
    is missing or unreadable, a note says so and the image itself is shown if it can be read.
    """
    card = ImageCard(rank, rec["path"], rec["is_anomalous"], rec["score"], rec["normalized_score"],
                     rec["threshold"], label=label, category=rec.get("category"), routed=rec.get("routed"),
                     whole_image=bool(rec.get("whole_image_anomalous", False)),
                     out_of_focus=bool(rec.get("out_of_focus", False)))
    if heatmap is not None:
        card.thumb = _try_thumbnail(heatmap, HEATMAP_MISSING, card.notes)
        card.thumb_kind = "heatmap overlay"
    if card.thumb is None:
        card.thumb = _try_thumbnail(Path(rec["path"]), IMAGE_MISSING, card.notes)
        card.thumb_kind = "image"
    return card


def file_notes(cards: list[ImageCard]) -> list[str]:
    """Page-level notes counting the cards whose heatmap is missing and those with no picture."""
    notes = []
    n_heat = sum(any(n.startswith(HEATMAP_MISSING) for n in c.notes) for c in cards)
    if n_heat:
        notes.append(f"{n_heat} of {len(cards)} heatmap files are missing; those cards show the image "
                     f"itself where it can still be read.")
    n_none = sum(c.thumb is None for c in cards)
    if n_none:
        notes.append(f"{n_none} of {len(cards)} images could not be shown (file missing or unreadable: "
                     f"see the card). Image paths are read as recorded; relative ones from the folder "
                     f"patchbank report runs in.")
    return notes


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A tqdm bar of ``total`` steps on stderr (disabled unless ``progress``: the CLI's
    ``--quiet`` turns it off); call ``update()`` per step and ``close()`` at the end."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False)
