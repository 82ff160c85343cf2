"""What a ``predict`` input names, and the heatmap file each image gets
(:mod:`patchbank.io.prediction_files`): no two images share a heatmap file; a folder, flat or
nested, skips only entries without an image extension (one warning) and refuses an unreadable
entry with one (a broken link, a loop, a FIFO), as when it is given directly."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from patchbank.errors import PatchbankError
from patchbank.io.output_files import check_not_inputs
from patchbank.io.prediction_files import expand_inputs, heatmap_names


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    return path


# ------------------------------------------------------------------ heatmap names

@pytest.mark.parametrize("paths, expected", [
    (["t/good/000.png", "t/spot/000.png", "t/spot/001.png"], ["good_000.png", "spot_000.png", "001.png"]),
    (["a/x.png", "a/x.jpg"], ["a_x.png", "a_x_1.png"]),
    # the audit's case: a suffix chosen for a collision must not be another input's own name
    (["cam/frame.png", "cam/frame.jpg", "cam/cam_frame_1.png"],
     ["cam_frame.png", "cam_frame_2.png", "cam_frame_1.png"]),
    (["cam/cam_frame_1.png", "cam/frame.png", "cam/frame.jpg"],
     ["cam_frame_1.png", "cam_frame.png", "cam_frame_2.png"]),
    (["a/x.png", "a/x.jpg", "a/x.bmp", "b/a_x_1.png", "c/a_x_2.png"],
     ["a_x.png", "a_x_3.png", "a_x_4.png", "a_x_1.png", "a_x_2.png"]),
    # names differing only in case are one file on a case-insensitive file system
    (["cam/A.png", "cam/a.png"], ["cam_A.png", "cam_a_1.png"]),
    (["x/A.png", "y/a.png"], ["x_A.png", "y_a.png"]),
])
def test_heatmap_names_are_distinct_and_never_another_images_own_name(paths, expected):
    got = heatmap_names([Path(p) for p in paths])
    assert got == expected
    assert len({g.casefold() for g in got}) == len(got)      # distinct on any file system
    assert heatmap_names([Path(p) for p in paths]) == got      # deterministic


def test_heatmap_names_distinct_for_many_colliding_stems():
    paths = [Path(f"d{i % 3}/{'x' if i % 2 else 'x_1'}.{ext}") for i in range(12)
             for ext in ("png", "jpg")]
    got = heatmap_names(paths)
    assert len(set(got)) == len(got) == len(paths)


# ------------------------------------------------------------------ folders: skipped and refused entries

def unreadable(kind: str, path: Path) -> None:
    """Make ``path`` an entry that cannot be read as an image."""
    if kind == "broken link":
        path.symlink_to(path.parent / "missing.png")
    elif kind == "loop":
        path.symlink_to(path)
    else:
        os.mkfifo(path)


REASON = {"broken link": "is a link to a missing file or a loop of links",
          "loop": "is a link to a missing file or a loop of links",
          "fifo": "is not a regular file or a folder (a FIFO"}


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("kind", list(REASON))
def test_an_unreadable_entry_with_an_image_extension_is_an_error_naming_it(tmp_path, kind, nested):
    folder = tmp_path / "in" / ("good" if nested else "")
    image(folder / "a.png")
    unreadable(kind, folder / "b.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # not skipped as "not an image"
        with pytest.raises(PatchbankError, match=rf"b\.png {REASON[kind][:20]}"):
            expand_inputs([str(tmp_path / "in")])


def test_a_nested_folder_skips_non_images_with_one_warning_naming_them(tmp_path):
    root = tmp_path / "test"
    image(root / "good" / "a.png")
    image(root / "crack" / "b.png")
    (root / "crack" / "notes.txt").write_text("x")
    (root / "good" / "gone.txt").symlink_to(tmp_path / "missing.txt")
    (root / "linked").symlink_to(root / "good", target_is_directory=True)
    with pytest.warns(UserWarning) as record:
        got = expand_inputs([str(root)])
    assert [p.relative_to(root).as_posix() for p in got] == ["crack/b.png", "good/a.png"]
    messages = [str(w.message) for w in record]
    assert messages == [f"{root}: skipped 3 entries that are not an image: crack/notes.txt, "
                        f"good/gone.txt, linked/ (image extensions: .png, .jpg, .jpeg, .bmp, .tif, "
                        f".tiff, .webp, .gif, .pbm, .pgm, .ppm, .pnm)"]


def test_an_empty_input_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "a.png")               # "" used to read the current folder
    with pytest.raises(PatchbankError, match=r'an input path is empty \(""\).*unset shell variable'):
        expand_inputs([""])


# ------------------------------------------------------------------ outputs that are inputs

def test_an_output_that_is_an_input_by_another_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = image(tmp_path / "imgs" / "a.png")
    (tmp_path / "view").symlink_to(tmp_path / "imgs", target_is_directory=True)
    check_not_inputs([tmp_path / "imgs" / "b.png", tmp_path / "out.csv"], [a])      # no error
    for out in (a, Path("imgs/a.png"), Path("view/a.png"), Path("imgs/../imgs/a.png")):
        with pytest.raises(PatchbankError, match=rf"the output {out} is the input {a} \(the same file\)"):
            check_not_inputs([tmp_path / "x.csv", out], [a])
