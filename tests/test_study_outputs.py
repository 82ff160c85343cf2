"""The study commands check their output path before any work: one-line errors, no traceback."""
import pytest
from click.testing import CliRunner

from patchbank.cli import cli
from patchbank.io.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("d") / "part", n_train=6, n_test_good=1,
                        n_test_defect=1, size=64)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("e") / "other", n_train=6, n_test_good=1,
                        n_test_defect=1, size=64, seed=1)


@pytest.mark.parametrize("command", [
    ["structure", "{data}", "-o", "{file}/x", "--preset", "lmf-core"],
    ["route-eval", "{data}", "{other}", "-o", "{file}/x"],
    ["benchmark", "{data}", "-o", "{file}/x.json"],
    ["evaluate", "{data}", "-o", "{file}/x"],
    ["ablate", "{data}", "-o", "{file}/x"],
])
def test_output_under_a_file_is_refused_in_one_line(command, data, other, tmp_path, monkeypatch):
    def no_fit(*a, **k):   # refused before any work (session 31: route-eval fitted every seed first)
        raise AssertionError("a fit ran before the output was checked")

    monkeypatch.setattr("patchbank.detector.Detector.fit", no_fit)
    monkeypatch.setattr("patchbank.multi.MultiDetector.fit", no_fit)
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    args = [a.format(data=data, other=other, file=blocker) for a in command]
    result = CliRunner().invoke(cli, args + ["-q", "--threads", "1"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "afile" in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
