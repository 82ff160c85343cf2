"""What an evaluation or a study reads before its first fit: configs, seeds, categories, the
output folder.  Everything is checked here so that a bad input fails in seconds, not after an hour
of fitting, as one-line :class:`~patchbank.errors.PatchbankError`.
"""
from __future__ import annotations

import numbers
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.io.datasets import Category, read_dataset
from patchbank.io.output_files import check_output_folder, check_utf8_name


def say(progress: bool, text: str) -> None:
    """Print one progress line on stderr when ``progress`` is true."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def preset_config(preset: str, overrides: dict[str, Any] | None = None, *, context: str = "") -> Config:
    """``Config.preset(preset, **overrides)`` with a bad value reported as :class:`PatchbankError`
    (its message prefixed by ``context``, e.g. ``"kappa=2: "``)."""
    try:
        return Config.preset(preset, **(overrides or {}))
    except ValueError as exc:
        raise PatchbankError(f"{context}{exc}") from None


def seed_list(seeds: Iterable[int]) -> list[int]:
    """The seeds as ints; at least one, none twice; a one-line error for anything but a list of
    integers (a string was read digit by digit, ``0.9`` as seed 0)."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise PatchbankError(f"seeds must be a list of integers, got {seeds!r}")
    seeds = list(seeds)
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise PatchbankError(f"seeds must be a list of integers, got {seeds!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise PatchbankError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise PatchbankError(f"duplicate seeds in {seeds}")
    return seeds


def out_folder(path: str | os.PathLike, *subfolders: str) -> Path:
    """``path`` as an output folder, created with ``subfolders`` inside; checked first (one-line
    error if it, or a folder on the way, is a file, or it cannot be written)."""
    out = check_output_folder(path)
    out.mkdir(parents=True, exist_ok=True)
    for sub in subfolders:
        (out / sub).mkdir(exist_ok=True)
    return out


# ------------------------------------------------------------------------------------------------
# categories
# ------------------------------------------------------------------------------------------------

def category_names(categories: str | Iterable[str] | None) -> list[str] | None:
    """Wanted category names from a comma-separated string or an iterable; None means all."""
    if categories is None:
        return None
    if isinstance(categories, str):
        return [c.strip() for c in categories.split(",") if c.strip()]
    return [c.strip() for c in categories if c.strip()]


def select_categories(cats: Sequence[Category], categories: str | Iterable[str] | None) -> list[Category]:
    """The categories of ``cats`` named in ``categories`` (all when None), in the order of ``cats``.

    Raises :class:`PatchbankError` naming the unknown names and the available ones, or when two
    categories of ``cats`` share a name.
    """
    names = [c.name for c in cats]
    repeated = sorted({n for i, n in enumerate(names) if n in names[:i]})
    if repeated:
        raise PatchbankError(f"category names repeat across the dataset roots: {', '.join(repeated)}")
    wanted = category_names(categories)
    if wanted is None:
        return list(cats)
    unknown = [w for w in dict.fromkeys(wanted) if w not in names]
    if unknown:
        raise PatchbankError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; available: {', '.join(names) or 'none'}")
    return [c for c in cats if c.name in wanted]


def _is_categories(source: Any) -> bool:
    return isinstance(source, Category) or (isinstance(source, (list, tuple)) and bool(source)
                                            and all(isinstance(c, Category) for c in source))


def load_categories(source: Any, categories: str | Iterable[str] | None = None,
                    kind: str = "auto") -> list[Category]:
    """The categories to evaluate: the one place where categories are read and selected.

    Args:
        source: a dataset root (read with :func:`~patchbank.io.datasets.read_dataset` in layout
            ``kind``, which selects ``categories`` itself, in the order given), a list of roots
            (each read whole, then selected), or :class:`Category` records (e.g. from
            ``read_generic``), selected with :func:`select_categories`.
        categories: wanted names (comma-separated string or iterable); None for all.

    Returns:
        The selected categories; raises :class:`PatchbankError` when none is left.
    """
    if _is_categories(source):
        cats = select_categories([source] if isinstance(source, Category) else list(source), categories)
    elif isinstance(source, (list, tuple)):
        cats = select_categories([c for root in source for c in read_dataset(root, kind)], categories)
    else:
        cats = read_dataset(source, kind, category_names(categories))
    if not cats:
        raise PatchbankError("no categories selected")
    for cat in cats:
        check_written_names(cat)
    return cats


def check_written_names(category: Category) -> None:
    """Refuse, in one line, a category whose name or test image or mask paths are not valid
    UTF-8: the run files, CSVs and reports name them (training images are only counted and
    hashed, so their names may hold any bytes)."""
    check_utf8_name(category.name, "category name", "the evaluation's files name it in UTF-8")
    for p in [*category.test, *(m for m in category.masks if m is not None)]:
        check_utf8_name(p, "test file path", "the evaluation's files name it in UTF-8")


def source_text(source: Any) -> str:
    """How a category source is named in run records: the root, or a placeholder for records."""
    return "<categories given directly>" if _is_categories(source) else str(source)
