"""The ``patchbank`` command group, its one-line error reporting and the console-script entry.

Every :class:`~patchbank.errors.PatchbankError` and every usage error (bad option value,
missing argument) is printed as ONE line ``error: <message>`` on stderr with exit status 2;
anything else is a bug and keeps its traceback.  Ctrl-C (SIGINT) and SIGTERM stop a command the
same way, through its cleanup (:mod:`patchbank.runtime.signals`): one line ``aborted`` (``aborted
(SIGTERM)``) and exit status 128 + the signal's number, 130 or 143; an abort without a signal
(a ``KeyboardInterrupt`` raised by code) exits 1.  Progress bars go to stderr (``--quiet`` hides
them); results and summaries go to stdout.

The commands live in one module per group: :mod:`~patchbank.cli.model` (fit, predict),
:mod:`~patchbank.cli.info`, :mod:`~patchbank.cli.demo`, :mod:`~patchbank.cli.evaluation`
(evaluate, ablate, sweep), :mod:`~patchbank.cli.structcore` (structure, route-eval) and
:mod:`~patchbank.cli.speed` (benchmark); config options come from
:mod:`~patchbank.cli.config_options`.  torch is imported lazily, inside the commands, so
``--help`` is fast and ``--threads`` can set ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` before
torch starts its thread pools.
"""
from __future__ import annotations

import io
import signal
import sys

import click

from patchbank import __version__
from patchbank.cli.demo import demo
from patchbank.cli.evaluation import ablate, evaluate, sweep
from patchbank.cli.export import export
from patchbank.cli.info import info
from patchbank.cli.model import fit, predict
from patchbank.cli.serve import serve
from patchbank.cli.report import report
from patchbank.cli.speed import benchmark
from patchbank.cli.structcore import route_eval, structure_cmd
from patchbank.errors import PatchbankError
from patchbank.runtime.signals import Stopped, stop_signals


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class PatchbankGroup(click.Group):
    """A click group whose errors are one line on stderr: ``error: <message>``, exit 2.

    ``main(..., standalone_mode=False)`` returns the exit code instead of exiting.  While it
    runs, SIGTERM stops the command as Ctrl-C does (:func:`~patchbank.runtime.signals.stop_signals`).
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command line; report PatchbankError and click errors as one line, a stop
        signal as ``aborted`` with exit status 128 + its number."""
        try:
            with stop_signals():
                rv = super().main(args=args, prog_name=prog_name or "patchbank",
                                  complete_var=complete_var, standalone_mode=False, **extra)
        except PatchbankError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            code = 2
        except click.ClickException as exc:  # UsageError, BadParameter, ...
            msg = _one_line(exc.format_message())
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                msg += f" (see '{ctx.command_path} --help')"
            click.echo(f"error: {msg}", err=True)
            code = exc.exit_code if isinstance(exc, click.UsageError) else 2
        except click.Abort as exc:     # click's, after its blank line closing a terminal's ^C
            click.echo("aborted", err=True)
            code = exc.__cause__.exit_status if isinstance(exc.__cause__, Stopped) else 1
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx):
        """Run the command; SIGTERM's :class:`~patchbank.runtime.signals.Stopped`, once it has
        passed through the command's cleanup, ends the run here: one line ``aborted (SIGTERM)``,
        exit status 143.  (Ctrl-C's goes on to click, which writes the blank line that closes
        the ``^C`` a terminal echoes, then to :meth:`main`.)"""
        try:
            return super().invoke(ctx)
        except Stopped as exc:
            if exc.signum == signal.SIGINT:
                raise
            click.echo(f"aborted ({exc.name})", err=True)
            raise click.exceptions.Exit(exc.exit_status) from None


@click.group(cls=PatchbankGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="patchbank", message="%(prog)s %(version)s")
def cli() -> None:
    """patchbank: training-free industrial anomaly detection (LMF-Core, PatchCore, StructCore).

    \b
    patchbank fit train/good -o model.patchbank      build the memory bank from normal images
    patchbank predict model.patchbank test/ -o out   score images, write CSV/JSON (+ --heatmaps)
    patchbank info model.patchbank                   what is in a model file
    patchbank demo                                   synthetic end-to-end run, no network needed
    patchbank evaluate DATA -o results/              metrics per category, mean ± std over seeds
    patchbank ablate DATA -o ablation/               LMF-Core Table 5: add one module at a time
    patchbank sweep DATA --param kappa=0.25,0.5,1 -o sweep/
                                                     one Config field's values: table + PNG plot
    patchbank report RESULTS_DIR                     one HTML page of a predict/evaluate folder
    patchbank serve model.patchbank                  HTTP inference service (API docs at /docs)
    patchbank export model.patchbank -o DIR          one ONNX / OpenVINO graph (predict --runtime)
    """


for _command in (fit, predict, info, demo, evaluate, ablate, sweep, structure_cmd, route_eval, benchmark, report, serve, export):
    cli.add_command(_command)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>`` on one stderr line
    (no source path and line, which mean nothing to a user of the command)."""
    click.echo(f"warning: {_one_line(message)}", err=True)


def main() -> None:
    """Console-script entry point (``patchbank``): tune malloc, one-line warnings, run :data:`cli`."""
    import warnings

    from patchbank.runtime.malloc import tune_malloc

    tune_malloc()   # freed feature batches go back to the OS (see patchbank.runtime.malloc)
    warnings.showwarning = _one_line_warning
    # a file name that is not valid UTF-8 (Python holds its bytes as lone surrogates) is printed
    # with its bytes escaped, as stderr already does, instead of failing the print
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    cli.main(prog_name="patchbank")


if __name__ == "__main__":  # pragma: no cover
    main()
