"""Warnings reach a command-line user as one line ``warning: ...`` on stderr, not a Python
warning with a source path."""
import subprocess
import sys

import pytest

from patchbank.io.synthetic import make_dataset


@pytest.mark.slow
def test_fit_on_few_images_warns_in_one_line(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=6, n_test_good=1, n_test_defect=1, size=64)
    out = subprocess.run(
        [sys.executable, "-m", "patchbank.cli", "fit", str(root / "train" / "good"), "-o",
         str(tmp_path / "m.patchbank"), "--backbone", "efficientnet_lite0", "--image-size", "64",
         "--crop-size", "none", "-q", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["warning: the threshold is calibrated on only 6 normal training images (each "
                     "scored without its own patches); use 100 or more for a stable false-positive "
                     "rate at target_fpr 0.01"]


def test_fit_refuses_a_map_smaller_than_the_patch_before_any_warning(tmp_path):
    # 6 images would warn; a 7 x 7 input gives a 1 x 1 map: the error alone, before the warning,
    # the progress bar or any image is read (was: warning, bar, then the error)
    root = make_dataset(tmp_path / "d", n_train=6, n_test_good=1, n_test_defect=1, size=64)
    out = subprocess.run(
        [sys.executable, "-m", "patchbank.cli", "fit", str(root / "train" / "good"), "-o",
         str(tmp_path / "m.patchbank"), "--backbone", "efficientnet_lite0", "--image-size", "7",
         "--crop-size", "none", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["error: patch_size 3 is larger than the backbone's feature map (1 x 1 for a 7 x 7 "
                     "input): use a smaller patch_size or a larger image_size"]
    assert not (tmp_path / "m.patchbank").exists()


def test_duplicate_predict_inputs_are_predicted_once_with_a_warning(tmp_path):
    from patchbank.cli.predictions import expand_inputs

    root = make_dataset(tmp_path / "d", n_train=1, n_test_good=2, n_test_defect=0, size=32)
    a = root / "test" / "good" / "000.png"
    link = tmp_path / "link.png"
    link.symlink_to(a)
    with pytest.warns(UserWarning, match="2 of 4 inputs name an image given already"):
        got = expand_inputs((str(a), str(link), str(a), str(root / "test" / "good" / "001.png")))
    assert [p.name for p in got] == ["000.png", "001.png"]
