"""Warnings reach a command-line user as one line ``warning: ...`` on stderr, not a Python
warning with a source path."""
import subprocess
import sys

from patchbank.io.synthetic import make_dataset


def test_fit_on_few_images_warns_in_one_line(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=6, n_test_good=1, n_test_defect=1, size=64)
    out = subprocess.run(
        [sys.executable, "-m", "patchbank.cli", "fit", str(root / "train" / "good"), "-o",
         str(tmp_path / "m.patchbank"), "--backbone", "efficientnet_lite0", "--image-size", "64",
         "--crop-size", "none", "-q", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["warning: the threshold is calibrated on only 5 held-out normal images "
                     "(6 training images); use 100 or more for a stable false-positive rate"]
