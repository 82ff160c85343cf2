"""``patchbank report``: one self-contained HTML page from a predict or evaluate output folder."""
from __future__ import annotations

from pathlib import Path

import click

from patchbank.cli.options import GivenPath, overwrite_option


@click.command()
@click.argument("results_dir", type=GivenPath(path_type=Path), metavar="RESULTS_DIR")
@click.option("-o", "--output", type=GivenPath(path_type=Path), default=None,
              help="The HTML file to write [RESULTS_DIR/report.html].")
@overwrite_option("Replace an existing report file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def report(results_dir: Path, output: Path | None, overwrite: bool, quiet: bool) -> None:
    """Write one self-contained HTML report of RESULTS_DIR, the output folder of
    patchbank predict (predictions.json) or patchbank evaluate (summary.json, runs/).

    \b
    predict:  counts, thresholds, a histogram of normalised scores with the threshold, and
              every image by score with its heatmap overlay (or the image) and decision.
    evaluate: the metric table (mean ± std over seeds), ROC and PR curves per category and
              seed with the operating point at the threshold, and the worst good and
              defective images.

    Images are embedded as downscaled JPEG thumbnails; charts are inline SVG; the page needs
    no network.  An existing file is never replaced without --overwrite, and a file the report
    reads (predictions.json, a heatmap, an image) never.
    """
    from patchbank.io.output_files import format_size
    from patchbank.report import write_report

    out = write_report(results_dir, output, overwrite=overwrite, progress=not quiet)
    click.echo(f"wrote {out} ({format_size(out.stat().st_size)})")
