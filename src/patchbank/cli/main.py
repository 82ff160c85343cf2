"""Command line: ``patchbank fit | predict | info | demo | evaluate | ablate | sweep``.

Every :class:`~patchbank.errors.PatchbankError` and every usage error (bad option value,
missing argument) is printed as ONE line ``error: <message>`` on stderr with exit status 2;
anything else is a bug and keeps its traceback.  Progress bars go to stderr (``--quiet`` hides
them); results and summaries go to stdout.

``fit`` has one option per :class:`~patchbank.config.Config` field, generated from
``dataclasses.fields(Config)``: ``--coreset-ratio 0.05``, ``--image-size 320x768``,
``--projection-dim none``, ``--layers 2,4``.  Only options given on the command line override
the preset.

torch is imported lazily, inside the commands, so ``--help`` is fast and ``--threads`` can set
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` before torch starts its thread pools.
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from patchbank import config as _config_module
from patchbank import __version__
from patchbank.config import PRESETS, Config
from patchbank.errors import PatchbankError

DEFAULT_PRESET = "lmf-core"
_CFG_PREFIX = "cfg_"


# ------------------------------------------------------------------------------------------------
# The group: one-line errors, exit status 2
# ------------------------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Group(click.Group):
    """A click group whose errors are one line on stderr: ``error: <message>``, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
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
        except click.Abort:
            click.echo("aborted", err=True)
            code = 1
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    """


def main() -> None:
    """Console-script entry point (``patchbank``)."""
    from patchbank.runtime.malloc import tune_malloc

    tune_malloc()   # freed feature batches go back to the OS (see patchbank.runtime.malloc)
    cli.main(prog_name="patchbank")


# ------------------------------------------------------------------------------------------------
# Config fields as options
# ------------------------------------------------------------------------------------------------

def option_name(field_name: str) -> str:
    """``coreset_ratio`` -> ``--coreset-ratio``."""
    return "--" + field_name.replace("_", "-")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


_INT_RE = re.compile(r"^[+-]?\d+$")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def _format_value(value: Any, kind: str = "") -> str:
    """A Config value the way it is typed on the command line."""
    if value is None:
        return "none"
    if kind == "size" and isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}" if value[0] != value[1] else str(value[0])
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ConfigValue(click.ParamType):
    """Parses one Config field's value from its command-line text.

    ``none`` (any case) gives None for optional fields; int / float / bool / str by the field's
    type; ``tuple[int, int]`` fields are sizes ``N`` or ``HxW`` (parsed by Config's own size
    parser); other tuples are comma lists whose items are ints where they look like ints.
    Range and choice checks are left to :class:`Config`, whose message is reported against the
    option (see :func:`build_config`).
    """

    def __init__(self, field_name: str, tp: Any, default: Any):
        self.field_name = field_name
        base, self.optional = _strip_optional(tp)
        self.base = base
        origin = typing.get_origin(base)
        args = typing.get_args(base)
        if base is bool:
            self.kind = "bool"
        elif base is int:
            self.kind = "int"
        elif base is float:
            self.kind = "float"
        elif base is str:
            self.kind = "str"
        elif origin is tuple and len(args) == 2 and all(a is int for a in args):
            self.kind = "size"
        elif origin is tuple:
            self.kind = "list"
        else:
            self.kind = "str"
        self.choices = _choices_for(field_name)
        self.name = self.kind

    # click calls this for metavar display
    def get_metavar(self, param, ctx=None) -> str:  # noqa: D401 - click API
        if self.choices:
            text = "|".join(self.choices)
        else:
            text = {"bool": "BOOL", "int": "INT", "float": "FLOAT", "str": "TEXT",
                    "size": "N|HxW", "list": "A,B,..."}[self.kind]
        return f"{text}|none" if self.optional else text

    def convert(self, value: Any, param, ctx) -> Any:
        if not isinstance(value, str):
            return value  # already converted (defaults, programmatic calls)
        text = value.strip()
        if text.lower() == "none":
            if self.optional:
                return None
            self.fail(f"{value!r}: this setting cannot be none", param, ctx)
        if not text:
            self.fail("empty value", param, ctx)
        if self.kind == "int":
            if not _INT_RE.match(text):
                self.fail(f"expected an integer, got {value!r}", param, ctx)
            return int(text)
        if self.kind == "float":
            try:
                number = float(text)
            except ValueError:
                self.fail(f"expected a number, got {value!r}", param, ctx)
            if not math.isfinite(number):
                self.fail(f"expected a finite number, got {value!r}", param, ctx)
            return number
        if self.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            self.fail(f"expected true or false, got {value!r}", param, ctx)
        if self.kind == "size":
            parser = getattr(_config_module, "_size_pair", None)
            if parser is None:
                return text  # Config parses "N" / "HxW" itself
            try:
                return parser(text, option_name(self.field_name))
            except ValueError as exc:
                self.fail(_strip_field_prefix(str(exc)), param, ctx)
        if self.kind == "list":
            items = [p.strip() for p in text.split(",")]
            if any(not p for p in items):
                self.fail(f"expected a comma-separated list like 2,3, got {value!r}", param, ctx)
            return tuple(int(p) if _INT_RE.match(p) else p for p in items)
        return text


def _strip_field_prefix(message: str) -> str:
    return re.sub(r"^--?[\w-]+:\s*", "", message)


def _choices_for(field_name: str) -> tuple[str, ...] | None:
    """Allowed values of a str field, from config's module-level tuples (FUSIONS for fusion ...)."""
    for const, value in vars(_config_module).items():
        if (const.isupper() and isinstance(value, tuple) and value
                and all(isinstance(v, str) for v in value)
                and const.lower().startswith(field_name) and len(const) - len(field_name) <= 2):
            return value
    return None


def _field_comments() -> dict[str, str]:
    """The ``# comment`` after each field in Config's source, for --help."""
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):
        return {}
    comments = {}
    for line in source.splitlines():
        m = re.match(r"^\s{4}(\w+)\s*:[^#]*#\s*(.+?)\s*$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    return comments


def config_field_options() -> list[click.Option]:
    """One click option per Config field, named ``--field-name``; default None = 'keep preset'."""
    hints = typing.get_type_hints(Config)
    comments = _field_comments()
    base = PRESETS.get(DEFAULT_PRESET, Config())
    options = []
    for f in dataclasses.fields(Config):
        ptype = ConfigValue(f.name, hints.get(f.name, str), f.default)
        note = comments.get(f.name, "")
        if re.fullmatch(r'"[^"]*"(\s*\|\s*"[^"]*")*', note):
            note = ""  # a bare list of the choices: the metavar shows them already
        default_text = _format_value(getattr(base, f.name), ptype.kind)
        help_text = f"{note} [{DEFAULT_PRESET}: {default_text}]" if note else f"[{DEFAULT_PRESET}: {default_text}]"
        options.append(click.Option([option_name(f.name), _CFG_PREFIX + f.name], type=ptype,
                                    default=None, help=help_text))
    return options


def _with_config_options(command):
    command.params.extend(config_field_options())
    return command


def given_overrides(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The Config fields given explicitly on the command line (or via env), field -> value."""
    out = {}
    for f in dataclasses.fields(Config):
        key = _CFG_PREFIX + f.name
        source = ctx.get_parameter_source(key)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out[f.name] = params[key]
    return out


def build_config(preset: str, overrides: dict[str, Any]) -> Config:
    """``Config.preset(preset, **overrides)`` with Config's ValueError reported against options."""
    try:
        return Config.preset(preset, **overrides)
    except ValueError as exc:
        message = str(exc)
    names = sorted((f.name for f in dataclasses.fields(Config)), key=len, reverse=True)
    m = re.match(r"^(\w+):\s*(.*)$", message)
    if m and m.group(1) in {f.name for f in dataclasses.fields(Config)}:
        raise click.UsageError(f"invalid value for {option_name(m.group(1))}: {m.group(2)}")
    for name in names:  # e.g. "crop_size (300, 300) is larger than image_size (256, 256)"
        if name in overrides or "_" in name:
            message = re.sub(rf"(?<![\w-]){name}(?![\w-])", option_name(name), message)
    raise click.UsageError(f"invalid options: {message}")


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def _check_device(device: str) -> str:
    if not _DEVICE_RE.match(device):
        raise click.BadParameter(f"expected cpu, cuda, cuda:N or mps, got {device!r}",
                                 param_hint="'--device'")
    return device


def _setup_threads(threads: int | None) -> None:
    """``--threads N``: the same N threads for torch, FAISS and numpy's BLAS (no oversubscription;
    see :mod:`patchbank.runtime.threads`), and the OpenMP/MKL/OpenBLAS env when torch is not loaded yet."""
    if threads is None:
        return
    from patchbank.runtime.threads import set_threads

    set_threads(threads)


def _common_run_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch, FAISS and numpy's BLAS [all cores].")(f)
    f = click.option("--device", default="cpu", show_default=True,
                     callback=lambda ctx, p, v: _check_device(v),
                     help="Torch device: cpu, cuda, cuda:N.")(f)
    return f


def _fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} MB ({int(n):,} bytes)"


def _expand_inputs(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given; folders -> their images (sorted), or, for a folder holding only
    sub-folders (like MVTec's ``test/``), the images of all sub-folders, recursively."""
    from patchbank.io.images import IMAGE_EXTENSIONS, list_images

    paths: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            direct = [c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS]
            if direct:
                paths.extend(list_images(p))
            else:
                nested = sorted(c for c in p.rglob("*") if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS)
                if not nested:
                    raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {p}")
                paths.extend(nested)
        elif p.is_file():
            paths.append(p)
        else:
            raise PatchbankError(f"file or folder not found: {p}")
    seen: set[Path] = set()
    unique = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def heatmap_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image; where stems collide (``test/good/000.png`` and
    ``test/spot/000.png``) the parent folder names are prefixed: ``good_000.png``, ``spot_000.png``."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = []
    for p, s in zip(paths, stems):
        names.append(f"{p.parent.name}_{s}" if counts[s] > 1 and p.parent.name else s)
    used: dict[str, int] = {}
    out = []
    for n in names:
        k = used.get(n, 0)
        used[n] = k + 1
        out.append(f"{n}.png" if k == 0 else f"{n}_{k}.png")
    return out


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PatchbankError(f"{existing[0]} already exists{more}; pass --overwrite to replace")


def run_predictions(det, paths: list[Path], out_dir: Path, *, heatmaps: bool, overwrite: bool,
                    batch_size: int | None, quiet: bool, model_path: str | None = None,
                    category: str | None = None) -> tuple[dict[str, Any], list]:
    """Predict, write ``predictions.csv`` / ``predictions.json`` (and heatmaps).

    Returns ``(the JSON dict, the Prediction list)``.

    Heatmap colours use ONE range for the whole run: ``vmin``/``vmax`` = the minimum and maximum
    of all the run's anomaly maps, so colours are comparable between the run's images (not
    between runs).
    """
    from patchbank.io.heatmap import save_overlay
    from patchbank.io.images import prepare_view

    csv_path, json_path = out_dir / "predictions.csv", out_dir / "predictions.json"
    heat_dir = out_dir / "heatmaps"
    names = heatmap_names(paths) if heatmaps else []
    _refuse_existing([csv_path, json_path] + [heat_dir / n for n in names], overwrite)
    if out_dir.exists() and not out_dir.is_dir():
        raise PatchbankError(f"output path is not a folder: {out_dir}")

    multi = hasattr(det, "router_")
    if multi:
        preds = det.predict([str(p) for p in paths], category=category, batch_size=batch_size)
    else:
        preds = det.predict([str(p) for p in paths], batch_size=batch_size)

    def threshold_of(pr) -> float:
        return float(det.detectors_[pr.category].threshold_ if multi else det.threshold_)

    threshold = None if multi else float(det.threshold_)
    records = []
    for i, (p, pr) in enumerate(zip(paths, preds)):
        rec = {"path": str(p), "score": float(pr.score), "normalized_score": float(pr.normalized_score),
               "is_anomalous": bool(pr.is_anomalous), "threshold": threshold_of(pr)}
        if multi:
            rec["category"] = pr.category
            rec["routed"] = category is None
        if heatmaps:
            rec["heatmap"] = str(heat_dir / names[i])
        records.append(rec)

    vmin = vmax = None
    out_dir.mkdir(parents=True, exist_ok=True)
    if heatmaps and preds:
        vmin = float(min(float(pr.anomaly_map.min()) for pr in preds))
        vmax = float(max(float(pr.anomaly_map.max()) for pr in preds))
        heat_dir.mkdir(parents=True, exist_ok=True)
        from tqdm import tqdm

        for p, pr, n in tqdm(list(zip(paths, preds, names)), desc="heatmaps", unit="img",
                             disable=quiet, file=sys.stderr, leave=False):
            save_overlay(heat_dir / n, prepare_view(str(p), det.config), pr.anomaly_map, vmin, vmax,
                         overwrite=overwrite)

    fields = (["path"] + (["category", "routed"] if multi else [])
              + ["score", "normalized_score", "is_anomalous", "threshold"] + (["heatmap"] if heatmaps else []))
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow({**rec, "score": f"{rec['score']:.6g}",
                             "normalized_score": f"{rec['normalized_score']:.6g}",
                             "threshold": f"{rec['threshold']:.6g}",
                             "is_anomalous": int(rec["is_anomalous"]),
                             **({"routed": int(rec["routed"])} if multi else {})})
    result = {
        "model": model_path,
        "threshold": threshold,
        "threshold_applies_to": "normalized_score",
        **({"categories": det.categories, "routing": "given" if category else "routed"} if multi else {}),
        "n_images": len(records),
        "n_flagged": sum(r["is_anomalous"] for r in records),
        "heatmaps": ({"folder": str(heat_dir), "vmin": vmin, "vmax": vmax,
                      "colormap": "jet", "range": "min..max of this run's maps"} if heatmaps else None),
        "predictions": records,
    }
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    return result, preds


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------

@cli.command(context_settings={"max_content_width": 110},
             epilog="Config options override single fields of the preset; only options you give "
                    "override. Values: 'none' for optional fields, N or HxW for sizes (320x768), "
                    "comma lists for tuples (--layers 2,4).")
@click.argument("train_dirs", nargs=-1, required=True, metavar="TRAIN_DIR...")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Model file to write (e.g. model.patchbank).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Method configuration to start from.")
@click.option("--multi", is_flag=True,
              help="Write a multi-category (routed) model even for a single category.")
@click.option("--add", "add", is_flag=True,
              help="Add the given categories to the existing multi-category model OUTPUT; its "
                   "other categories are kept byte for byte (its configuration is used).")
@_common_run_options
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@click.pass_context
def fit(ctx: click.Context, train_dirs: tuple[str, ...], output: Path, preset: str, multi: bool,
        add: bool, device: str, threads: int | None, quiet: bool, overwrite: bool,
        **config_params: Any) -> None:
    """Build a model from defect-free images.

    One TRAIN_DIR of images gives a single-category model.  Several categories give one routed
    multi-category model (StructCore Sec. 3.4): give several image folders, NAME=FOLDER pairs,
    or dataset roots in the MVTec layout (every category's train/good is used).
    """
    overrides = given_overrides(ctx, config_params)
    if output.exists() and output.is_dir():
        raise PatchbankError(f"{output} is a folder; give a model file name")
    if add:
        if not output.is_file():
            raise PatchbankError(f"--add needs an existing model file: {output} not found")
        if overrides:
            raise PatchbankError("--add uses the model's configuration; config options "
                                 f"({', '.join('--' + option_name(k) for k in overrides)}) cannot be changed")
    elif output.exists() and not overwrite:
        raise PatchbankError(f"{output} already exists; pass --overwrite to replace it (or --add)")
    config = None if add else build_config(preset, overrides)
    categories = _training_categories(train_dirs)
    _setup_threads(threads)
    t0 = time.perf_counter()
    if add or multi or len(categories) > 1:
        from patchbank.multi import MultiDetector

        if add:
            model = MultiDetector.load(output, device=device, progress=not quiet)
            clash = [n for n in categories if n in model.detectors_]
            if clash:
                raise PatchbankError(f"{output} already has categor{'y' if len(clash) == 1 else 'ies'} "
                                     f"{', '.join(clash)}")
            for name, images in categories.items():
                model.add(name, [str(p) for p in images])
        else:
            model = MultiDetector(config, device=device, progress=not quiet)
            model.fit({name: [str(p) for p in images] for name, images in categories.items()})
        fit_s = time.perf_counter() - t0
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(output, overwrite=True if add else overwrite)
        info = model.info()
        verb = "added" if add else "fitted"
        click.echo(f"{verb} {', '.join(categories)} in {fit_s:.1f} s; model holds "
                   f"{len(info['categories'])} categories ({', '.join(info['category_order'])}), "
                   f"banks {_fmt_bytes(info['bank_bytes'])}, {info['routing_prototypes']} routing "
                   f"prototypes each")
        click.echo(f"wrote {output}")
        return
    (name, images), = categories.items()
    from patchbank.detector import Detector

    det = Detector(config, device=device, progress=not quiet)
    det.fit([str(p) for p in images])
    fit_s = time.perf_counter() - t0
    output.parent.mkdir(parents=True, exist_ok=True)
    det.save(output, overwrite=overwrite)
    info = det.info()
    click.echo(f"fitted {preset} ({config.backbone}) on {len(images)} images in {fit_s:.1f} s")
    click.echo(f"bank: {info['bank_entries']:,} x {info['bank_dim']}, "
               f"{_fmt_bytes(info.get('bank_bytes'))}; threshold {float(det.threshold_):.3f} (normalised score)")
    click.echo(f"wrote {output}")


def _training_categories(args: tuple[str, ...]) -> dict[str, list[Path]]:
    """TRAIN_DIR arguments -> {category name: training images}.

    ``NAME=FOLDER`` names a folder of images; a folder holding images directly is named after
    itself; any other folder is read as a dataset root (MVTec / BTAD / VisA layouts) whose
    categories' training images are used.
    """
    from patchbank.io.datasets import read_dataset
    from patchbank.io.images import IMAGE_EXTENSIONS, list_images
    from patchbank.multi import check_category_name

    out: dict[str, list[Path]] = {}

    def put(name: str, images: list[Path]) -> None:
        check_category_name(name)
        if name in out:
            raise PatchbankError(f"category {name!r} is given twice; name them with NAME=FOLDER")
        out[name] = images

    for arg in args:
        name, sep, folder = arg.partition("=")
        if sep:
            path = Path(folder)
        else:
            name, path = "", Path(arg)
        if not path.exists():
            raise PatchbankError(f"training folder not found: {path}")
        if not path.is_dir():
            raise PatchbankError(f"not a folder: {path}")
        has_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
        if has_images or sep or not any(p.is_dir() for p in path.iterdir()):
            put(name or path.name, list_images(path))   # (list_images names an empty folder)
        else:
            for cat in read_dataset(path):
                put(cat.name, list(cat.train))
    return out


_with_config_options(fit)


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------

@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for predictions.csv, predictions.json and heatmaps/.")
@click.option("--heatmaps", is_flag=True,
              help="Write a PNG overlay per image to OUT_DIR/heatmaps/<stem>.png (one colour range "
                   "for the whole run: min..max of its anomaly maps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass [the model's batch_size].")
@click.option("--category", default=None,
              help="Multi-category model: score against this category, skipping routing.")
@_common_run_options
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def predict(model: Path, inputs: tuple[str, ...], out_dir: Path, heatmaps: bool, batch_size: int | None,
            category: str | None, device: str, threads: int | None, quiet: bool, overwrite: bool) -> None:
    """Score INPUT images (files or folders) with MODEL.

    A folder contributes its images; a folder holding only sub-folders (like MVTec's test/)
    contributes the images of all its sub-folders.
    """
    if not model.is_file():
        raise PatchbankError(f"model file not found: {model}")
    if not overwrite:
        _refuse_existing([out_dir / "predictions.csv", out_dir / "predictions.json"], overwrite)
    paths = _expand_inputs(inputs)
    _setup_threads(threads)
    from patchbank.multi import MultiDetector, load_any

    det = load_any(model, device=device, progress=not quiet)
    if category is not None and not isinstance(det, MultiDetector):
        raise PatchbankError(f"--category needs a multi-category model; {model} has one category")
    t0 = time.perf_counter()
    result, _ = run_predictions(det, paths, out_dir, heatmaps=heatmaps, overwrite=overwrite,
                             batch_size=batch_size, quiet=quiet, model_path=str(model),
                             category=category)
    dt = time.perf_counter() - t0
    _print_predict_summary(result, out_dir, dt)


def _print_predict_summary(result: dict[str, Any], out_dir: Path, seconds: float) -> None:
    n, flagged = result["n_images"], result["n_flagged"]
    if result["threshold"] is None:   # multi-category: one threshold per category
        counts = {}
        for rec in result["predictions"]:
            counts[rec["category"]] = counts.get(rec["category"], 0) + 1
        how = "given" if result.get("routing") == "given" else "routed"
        click.echo(f"{n} images in {seconds:.1f} s: {flagged} flagged anomalous (per-category "
                   f"thresholds); {how}: " + ", ".join(f"{c} {k}" for c, k in counts.items()))
    else:
        click.echo(f"{n} images in {seconds:.1f} s: {flagged} flagged anomalous "
                   f"(normalised score > {result['threshold']:.3f})")
    click.echo(f"wrote {out_dir / 'predictions.csv'} and {out_dir / 'predictions.json'}")
    if result["heatmaps"]:
        h = result["heatmaps"]
        click.echo(f"heatmaps in {h['folder']} (colour range {h['vmin']:.4g}..{h['vmax']:.4g})")


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------

def _closest_preset(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    best, best_diff = DEFAULT_PRESET, None
    for name, preset in PRESETS.items():
        ref = preset.to_dict()
        diff = [k for k in ref if k in cfg and _norm(cfg[k]) != _norm(ref[k])]
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    return best, best_diff or []


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def format_info(info: dict[str, Any], path: str | None = None) -> str:
    """Human-readable text for :meth:`Detector.info`."""
    info = dict(info)
    lines = []

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:<18} {value}")

    if path:
        row("model", path)
    if "format_version" in info:
        row("format version", info.pop("format_version"))
    cfg = info.pop("config", None) or {}
    entries, dim, nbytes = info.pop("bank_entries", None), info.pop("bank_dim", None), info.pop("bank_bytes", None)
    if entries is not None or nbytes is not None:
        shape = f"{entries:,} entries x {dim} dims" if isinstance(entries, int) else f"{entries} x {dim}"
        dtype = cfg.get("bank_dtype")
        row("memory bank", f"{shape}, {_fmt_bytes(nbytes)}" + (f", {dtype}" if dtype else ""))
    if "threshold" in info:
        thr = info.pop("threshold")
        fpr = cfg.get("target_fpr")
        row("threshold", f"{float(thr):.4f} on the normalised score"
            + (f" (target FPR {fpr:g} on held-out normal images)" if fpr is not None else ""))
    mean, std = info.pop("score_mean", None), info.pop("score_std", None)
    n_cal = info.pop("n_calibration_images", None)
    info.pop("target_fpr", None)  # shown with the threshold and in the config
    if mean is not None or std is not None:
        row("calibration", f"raw image score mean {float(mean):.4g}, std {float(std):.4g}"
            + (f" over {n_cal} held-out normal images" if n_cal is not None else ""))
    if "n_train_images" in info:
        row("train images", info.pop("n_train_images"))
    backbone = cfg.get("backbone")
    sha = info.pop("backbone_sha256", None)
    if backbone:
        row("backbone", backbone + (f" (weights sha256 {str(sha)[:16]}...)" if sha else ""))
    elif sha:
        row("backbone sha256", sha)
    for key in sorted(info):
        value = info[key]
        row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else value)
    if cfg:
        name, diff = _closest_preset(cfg)
        lines.append("")
        lines.append(f"config (closest preset: {name}"
                     + (f"; differs in {', '.join(diff)})" if diff else ", unchanged)"))
        for key, value in cfg.items():
            mark = "*" if key in diff else " "
            lines.append(f" {mark} {key:<24} {_format_value(tuple(value) if isinstance(value, list) else value, 'size' if key.endswith('_size') else '')}")
    return "\n".join(lines)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the info dict as JSON.")
def info(model: Path, as_json: bool) -> None:
    """Describe a model file: bank size, configuration, threshold, calibration."""
    if not model.is_file():
        raise PatchbankError(f"model file not found: {model}")
    from patchbank.io.model_file import load_model

    _, data = load_model(model)   # the header holds the whole info; no backbone is needed
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif data.get("kind") == "multi":
        cats = data.pop("categories")
        head = {k: v for k, v in data.items() if k not in ("category_order", "bank_bytes")}
        head["categories"] = ", ".join(data["category_order"])
        head["banks total"] = _fmt_bytes(data.get("bank_bytes"))
        parts = [format_info(head, str(model))]
        for name in data["category_order"]:
            sub = {k: v for k, v in cats[name].items() if k not in ("config", "format_version",
                                                                    "patchbank_version")}
            parts.append(f"\n[{name}]\n" + format_info(sub))
        click.echo("\n".join(parts))
    else:
        click.echo(format_info(data, str(model)))


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------

@cli.command()
@click.option("-o", "--output", "out_dir", default="demo_out", show_default=True,
              type=click.Path(path_type=Path), help="Folder for the data, model and predictions.")
@_common_run_options
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo run.")
def demo(out_dir: Path, device: str, threads: int | None, quiet: bool, overwrite: bool) -> None:
    """Synthetic end-to-end run (no network): make data, fit lmf-core, predict, report AUROC.

    Writes OUT/data (MVTec layout), OUT/model.patchbank and OUT/predictions (CSV, JSON and
    heatmaps/).
    """
    from patchbank.io.synthetic import DEFECT_TYPES, make_dataset

    data_dir, model_path, pred_dir = out_dir / "data", out_dir / "model.patchbank", out_dir / "predictions"
    _refuse_existing([model_path, pred_dir / "predictions.csv", pred_dir / "predictions.json"], overwrite)
    _setup_threads(threads)
    t_start = time.perf_counter()
    make_dataset(data_dir)
    if not quiet:
        click.echo(f"synthetic dataset (defects: {', '.join(DEFECT_TYPES)}) in {data_dir}", err=True)

    from patchbank.detector import Detector
    from patchbank.io.images import list_images

    det = Detector.from_preset("lmf-core", device=device, progress=not quiet)
    t0 = time.perf_counter()
    det.fit(data_dir / "train" / "good")
    fit_s = time.perf_counter() - t0
    det.save(model_path, overwrite=True)

    test_dirs = [data_dir / "test" / "good"] + [data_dir / "test" / d for d in DEFECT_TYPES]
    paths = [p for d in test_dirs for p in list_images(d)]
    t0 = time.perf_counter()
    result, preds = run_predictions(det, paths, pred_dir, heatmaps=True, overwrite=overwrite,
                                    batch_size=None, quiet=quiet, model_path=str(model_path))
    pred_s = time.perf_counter() - t0

    # Labels from the folders (good = 0), masks from ground_truth/ (empty for good images).
    import numpy as np
    from PIL import Image

    from patchbank.io.images import crop_mask
    from patchbank.evaluation.metrics import auroc, pixel_metrics

    labels = [0 if p.parent.name == "good" else 1 for p in paths]
    image_auroc = float(auroc(labels, [pr.score for pr in preds]))
    masks = []
    for p, pr in zip(paths, preds):
        gt = data_dir / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        if p.parent.name == "good" or not gt.is_file():
            masks.append(np.zeros(pr.anomaly_map.shape, dtype=bool))
        else:
            with Image.open(gt) as im:
                masks.append(crop_mask(np.asarray(im.convert("L")), det.config))
    pixel = pixel_metrics([pr.anomaly_map for pr in preds], masks)
    n_bad = sum(labels)
    click.echo(f"fit lmf-core ({det.config.backbone}) on {len(list_images(data_dir / 'train' / 'good'))} "
               f"images in {fit_s:.1f} s; predicted {len(paths)} test images in {pred_s:.1f} s")
    click.echo(f"image AUROC: {image_auroc:.3f}  ({len(paths) - n_bad} good, {n_bad} defective; "
               f"{result['n_flagged']} flagged at the calibrated threshold)")
    click.echo(f"pixel AUROC: {pixel['pixel_auroc']:.3f}, AUPRO: {pixel['aupro']:.3f}")
    click.echo(f"data:        {data_dir}")
    click.echo(f"model:       {model_path}")
    click.echo(f"predictions: {pred_dir / 'predictions.csv'}, {pred_dir / 'predictions.json'}")
    click.echo(f"heatmaps:    {pred_dir / 'heatmaps'}")
    click.echo(f"total {time.perf_counter() - t_start:.1f} s")


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------

def _comma_list(ctx, param, value):
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise click.BadParameter(f"expected a comma-separated list, got {value!r}")
    return items


def _seed_list(ctx, param, value):
    items = _comma_list(ctx, param, value)
    if items is None:
        return None
    if not all(_INT_RE.match(v) for v in items):
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2, got {value!r}")
    seeds = [int(v) for v in items]
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"duplicate seeds in {value!r}")
    return seeds


def _command_line(name: str, data_root: Path, out_dir: Path, head: list[str], kind: str,
                  categories: list[str] | None, seeds: list[int], overrides: dict[str, Any],
                  no_resume: bool) -> str:
    """The command as it would be typed again (stored in every run's JSON)."""
    import shlex

    args = [str(data_root), "-o", str(out_dir), *head, "--dataset", kind]
    if categories:
        args += ["--categories", ",".join(categories)]
    args += ["--seeds", ",".join(map(str, seeds))]
    for field, value in overrides.items():
        args += [option_name(field), _format_value(value, "size" if field.endswith("_size") else "")]
    if no_resume:
        args.append("--no-resume")
    return f"patchbank {name} " + " ".join(shlex.quote(a) for a in args)


def _run_setup(ctx: click.Context, preset: str, data_root: Path, seeds: list[int] | None,
               config_params: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Overrides given on the command line (checked against ``preset``) and the seed list."""
    overrides = given_overrides(ctx, config_params)
    build_config(preset, overrides)  # option errors now, before any data is read
    if not data_root.exists():
        raise PatchbankError(f"dataset root not found: {data_root}")
    if seeds is None:
        seeds = [overrides["seed"]] if "seed" in overrides else [0]
    overrides.pop("seed", None)
    return overrides, seeds


@cli.command(context_settings={"max_content_width": 110},
             epilog="Config options override single fields of the preset (as for 'fit'); --seeds "
                    "sets Config.seed per run.")
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for runs/*.json, results.csv, summary.csv/.json/.md.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Method configuration to start from.")
@click.option("--dataset", "kind", type=click.Choice(["auto", "mvtec", "btad", "visa", "mpdd"]),
              default="auto", show_default=True, help="Dataset layout.")
@click.option("--categories", callback=_comma_list, default=None, metavar="A,B,...",
              help="Categories to evaluate [all].")
@click.option("--seeds", callback=_seed_list, default=None, metavar="0,1,2",
              help="Seeds; one fit per category and seed [--seed, else 0].")
@click.option("--no-resume", is_flag=True, help="Recompute runs whose results already exist.")
@_common_run_options
@click.pass_context
def evaluate(ctx: click.Context, data_root: Path, out_dir: Path, preset: str, kind: str,
             categories: list[str] | None, seeds: list[int] | None, no_resume: bool, device: str,
             threads: int | None, quiet: bool, **config_params: Any) -> None:
    """Benchmark a preset on DATA_ROOT (MVTec AD, MPDD, BTAD or VisA layout): fit per category
    and seed, report image and pixel metrics, bank size and timings as mean ± std over seeds."""
    overrides, seeds = _run_setup(ctx, preset, data_root, seeds, config_params)
    command = _command_line("evaluate", data_root, out_dir, ["--preset", preset], kind, categories,
                            seeds, overrides, no_resume)
    _setup_threads(threads)
    from patchbank.evaluation.runner import evaluate as run_evaluation

    t0 = time.perf_counter()
    result = run_evaluation(data_root, preset=preset, overrides=overrides, categories=categories,
                            seeds=seeds, out_dir=out_dir, resume=not no_resume, progress=not quiet,
                            kind=kind, device=device, command=command)
    n_cat = len(result["summary"]["categories"])
    click.echo(f"{preset}: {n_cat} categor{'y' if n_cat == 1 else 'ies'} x {len(seeds)} seed(s) "
               f"in {time.perf_counter() - t0:.1f} s")
    click.echo("")
    click.echo(result["markdown"])
    click.echo("")
    click.echo(f"wrote {result['files']['results_csv']}, {result['files']['summary_csv']}, "
               f"{result['files']['summary_json']}, {result['files']['summary_md']}")


_with_config_options(evaluate)


def _study_options(f):
    """Options shared by ablate and sweep (as for evaluate)."""
    f = click.option("--no-resume", is_flag=True, help="Recompute runs whose results already exist.")(f)
    f = click.option("--seeds", callback=_seed_list, default=None, metavar="0,1,2",
                     help="Seeds; one fit per category and seed [--seed, else 0].")(f)
    f = click.option("--categories", callback=_comma_list, default=None, metavar="A,B,...",
                     help="Categories to evaluate [all].")(f)
    f = click.option("--dataset", "kind", type=click.Choice(["auto", "mvtec", "btad", "visa", "mpdd"]),
                     default="auto", show_default=True, help="Dataset layout.")(f)
    return f


def _print_study(result: dict[str, Any], what: str, seconds: float) -> None:
    click.echo(f"{what} in {seconds:.1f} s")
    click.echo("")
    click.echo(result["markdown"])
    click.echo("")
    click.echo("wrote " + ", ".join(str(p) for p in result["files"].values()))


# ------------------------------------------------------------------------------------------------
# ablate
# ------------------------------------------------------------------------------------------------

@cli.command(context_settings={"max_content_width": 110},
             epilog="Config options apply to every step, except the fields the steps set "
                    "(fusion, kappa, sampler). Steps: patchbank/ablation.py (STEPS).")
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for one evaluate folder per step and ablation.csv/.json/.md.")
@_study_options
@_common_run_options
@click.pass_context
def ablate(ctx: click.Context, data_root: Path, out_dir: Path, kind: str, categories: list[str] | None,
           seeds: list[int] | None, no_resume: bool, device: str, threads: int | None, quiet: bool,
           **config_params: Any) -> None:
    """LMF-Core's module ablation (Table 5) on DATA_ROOT: equal-weight features + greedy coreset
    (PatchCore-like), + VG-Fusion, + RP-Coreset (= lmf-core); one evaluate run per step."""
    from patchbank.studies.ablation import BASE_PRESET, STEPS, step_fields

    overrides, seeds = _run_setup(ctx, BASE_PRESET, data_root, seeds, config_params)
    clash = sorted(step_fields(STEPS) & set(overrides))
    if clash:
        raise click.UsageError(f"{', '.join(option_name(c) for c in clash)}: set by the ablation "
                               f"steps themselves, cannot be given")
    command = _command_line("ablate", data_root, out_dir, [], kind, categories, seeds, overrides,
                            no_resume)
    _setup_threads(threads)
    from patchbank.studies.ablation import ablate as run_ablation

    t0 = time.perf_counter()
    result = run_ablation(data_root, overrides, categories=categories, seeds=seeds, out_dir=out_dir,
                          resume=not no_resume, progress=not quiet, kind=kind, device=device,
                          command=command)
    _print_study(result, f"ablation: {len(STEPS)} steps x {len(seeds)} seed(s)",
                 time.perf_counter() - t0)


_with_config_options(ablate)


# ------------------------------------------------------------------------------------------------
# sweep
# ------------------------------------------------------------------------------------------------

def parse_param(ctx, param, value) -> tuple[str, list[Any]]:
    """``--param FIELD=V1,V2,...`` -> (field, [parsed values]).

    Values are parsed like the field's own option (``none``, ``320x768``, ``true``); for list
    fields (``layers``) the values are separated by ``;`` since each one holds commas.
    """
    if value is None:
        raise click.BadParameter("expected FIELD=V1,V2,... (e.g. kappa=0.25,0.5,1.0)")
    name, eq, rest = value.partition("=")
    name = name.strip().replace("-", "_")
    if not eq or not name or not rest.strip():
        raise click.BadParameter(f"expected FIELD=V1,V2,... (e.g. kappa=0.25,0.5,1.0), got {value!r}")
    hints = typing.get_type_hints(Config)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields:
        raise click.BadParameter(f"unknown config field {name!r}; choose one of {', '.join(fields)}")
    if name == "seed":
        raise click.BadParameter("seed is not swept; use --seeds")
    ptype = ConfigValue(name, hints.get(name, str), fields[name].default)
    texts = [t.strip() for t in rest.split(";" if ptype.kind == "list" else ",")]
    if any(not t for t in texts):
        raise click.BadParameter(f"empty value in {value!r}")
    values = []
    for text in texts:
        try:
            v = ptype.convert(text, None, None)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{name}={text}: {exc.message}") from None
        if ptype.choices and v is not None and v not in ptype.choices:
            raise click.BadParameter(f"{name}={text}: not one of {', '.join(ptype.choices)}")
        values.append(v)
    return name, values


@cli.command(context_settings={"max_content_width": 110},
             epilog="Config options override fields of the preset for every value (as for "
                    "'evaluate'), but not the swept field. Examples: --param kappa=0.25,0.5,1.0; "
                    "--param projection_dim=64,128,256; --param coreset_ratio=0.01,0.1,0.25; "
                    "--param image_size=256,320x768; --param 'layers=2,3;1,2,3'.")
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("--param", "param_spec", required=True, callback=parse_param, metavar="FIELD=V1,V2,...",
              help="The Config field to sweep and its values (list fields: values separated by ';').")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for one evaluate folder per value and sweep.csv/.json/.md/.png.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Method configuration to start from.")
@_study_options
@_common_run_options
@click.pass_context
def sweep(ctx: click.Context, data_root: Path, param_spec: tuple[str, list[Any]], out_dir: Path,
          preset: str, kind: str, categories: list[str] | None, seeds: list[int] | None,
          no_resume: bool, device: str, threads: int | None, quiet: bool, **config_params: Any) -> None:
    """Sensitivity of a preset to one Config field on DATA_ROOT (LMF-Core Table 6, Figures 2-3):
    one evaluate run per value, a table (mean ± std over seeds) and a PNG plot of image AUROC,
    pixel AUROC and AUPRO against the value."""
    param, values = param_spec
    overrides, seeds = _run_setup(ctx, preset, data_root, seeds, config_params)
    if param in overrides:
        raise click.UsageError(f"{option_name(param)} is swept by --param; do not give it too")
    for v in values:  # range checks, one line naming the value
        try:
            Config.preset(preset, **{**overrides, param: v})
        except ValueError as exc:
            text = _format_value(v, "size" if param.endswith("_size") else "")
            reason = re.sub(rf"^{param}:\s*", "", str(exc))
            raise click.BadParameter(f"{param}={text}: {reason}", param_hint="'--param'") from None
    spec_sep = ";" if isinstance(values[0], tuple) and not param.endswith("_size") else ","
    spec = f"{param}=" + spec_sep.join(_format_value(v, "size" if param.endswith("_size") else "")
                                       for v in values)
    command = _command_line("sweep", data_root, out_dir, ["--param", spec, "--preset", preset], kind,
                            categories, seeds, overrides, no_resume)
    _setup_threads(threads)
    from patchbank.studies.sweep import sweep as run_sweep

    t0 = time.perf_counter()
    result = run_sweep(data_root, param, values, preset=preset, overrides=overrides,
                       categories=categories, seeds=seeds, out_dir=out_dir, resume=not no_resume,
                       progress=not quiet, kind=kind, device=device, command=command)
    _print_study(result, f"sweep of {param}: {len(values)} values x {len(seeds)} seed(s)",
                 time.perf_counter() - t0)


_with_config_options(sweep)



# ------------------------------------------------------------------------------------------------
# StructCore studies: structure-aware scoring tables, routed multi-category evaluation
# ------------------------------------------------------------------------------------------------

@cli.command("structure", context_settings={"max_content_width": 110},
             epilog="One fit per category and seed; every score variant is computed from it.")
@click.argument("data_roots", nargs=-1, required=True, metavar="DATA_ROOT...")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for runs/*.json, structure.csv/.json/.md and fig2_<category>.png.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="structcore", show_default=True,
              help="Method configuration to start from.")
@click.option("--categories", callback=_comma_list, default=None, metavar="A,B,...",
              help="Categories to use [all].")
@click.option("--seeds", callback=_seed_list, default=None, metavar="0,1,2",
              help="Seeds; one fit per category and seed [--seed, else 0].")
@click.option("--no-resume", is_flag=True, help="Recompute runs whose results already exist.")
@_common_run_options
@click.pass_context
def structure_cmd(ctx: click.Context, data_roots: tuple[str, ...], out_dir: Path, preset: str,
                  categories: list[str] | None, seeds: list[int] | None, no_resume: bool, device: str,
                  threads: int | None, quiet: bool, **config_params: Any) -> None:
    """StructCore tables: base vs struct vs hybrid image scores, descriptor subsets (Tables 5, 7),
    structural distances (Table 6) and the Fig. 2 scatter, on one or more dataset roots."""
    roots = [Path(r) for r in data_roots]
    overrides, seeds = _run_setup(ctx, preset, roots[0], seeds, config_params)
    for r in roots:
        if not r.exists():
            raise PatchbankError(f"dataset root not found: {r}")
    _setup_threads(threads)
    from patchbank.studies.structure import study

    t0 = time.perf_counter()
    study(roots, preset=preset, overrides=overrides, categories=categories, seeds=seeds,
          out_dir=out_dir, resume=not no_resume, progress=not quiet, device=device)
    click.echo(f"structure study in {time.perf_counter() - t0:.1f} s")
    click.echo((out_dir / "structure.md").read_text())
    click.echo(f"wrote {out_dir / 'structure.md'}, structure.csv, structure.json and fig2_*.png")


_with_config_options(structure_cmd)


@cli.command("route-eval", context_settings={"max_content_width": 110})
@click.argument("data_roots", nargs=-1, required=True, metavar="DATA_ROOT...")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for routing.json and routing.md.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Method configuration to start from.")
@click.option("--categories", callback=_comma_list, default=None, metavar="A,B,...",
              help="Categories to use [all of every root].")
@click.option("--seeds", callback=_seed_list, default=None, metavar="0,1,2",
              help="Seeds; one multi-category fit per seed [--seed, else 0].")
@click.option("--prototypes", type=click.IntRange(min=1), default=64, show_default=True,
              help="Routing prototypes per category (K of StructCore Eq. 3).")
@_common_run_options
@click.pass_context
def route_eval(ctx: click.Context, data_roots: tuple[str, ...], out_dir: Path, preset: str,
               categories: list[str] | None, seeds: list[int] | None, prototypes: int, device: str,
               threads: int | None, quiet: bool, **config_params: Any) -> None:
    """Fit one routed model over all categories of DATA_ROOTs; report routing accuracy and the
    routed system's metrics next to the oracle (category given) system's."""
    roots = [Path(r) for r in data_roots]
    overrides, seeds = _run_setup(ctx, preset, roots[0], seeds, config_params)
    for r in roots:
        if not r.exists():
            raise PatchbankError(f"dataset root not found: {r}")
    _setup_threads(threads)
    from patchbank.studies.routing import evaluate_routing

    t0 = time.perf_counter()
    res = evaluate_routing(roots, preset=preset, overrides=overrides, categories=categories,
                           seeds=seeds, out_dir=out_dir, progress=not quiet, device=device,
                           n_prototypes=prototypes)
    click.echo(f"routing evaluation of {len(res['categories'])} categories in {time.perf_counter() - t0:.1f} s")
    click.echo((out_dir / "routing.md").read_text())


_with_config_options(route_eval)


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------

def _float_list(ctx, param, value):
    items = _comma_list(ctx, param, value)
    if items is None:
        return None
    try:
        out = [float(v) for v in items]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.01,0.1, got {value!r}") from None
    if any(not 0 < v <= 1 for v in out):
        raise click.BadParameter(f"ratios must be in (0, 1], got {value!r}")
    return out


def _int_list(ctx, param, value):
    items = _comma_list(ctx, param, value)
    if items is None:
        return None
    if not all(_INT_RE.match(v) and int(v) >= 1 for v in items):
        raise click.BadParameter(f"expected comma-separated positive integers like 1,16, got {value!r}")
    return [int(v) for v in items]


@cli.command(context_settings={"max_content_width": 110},
             epilog="The floor = read + resize + backbone forward with the detector's own loader "
                    "and forward, same threads and batch size; see patchbank.studies.speed.")
@click.argument("data")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="JSON file for the results (with the machine description).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Method configuration to start from.")
@click.option("--ratios", callback=_float_list, default=None, metavar="R1,R2,...",
              help="Coreset ratios to fit, one fit each [the preset's].")
@click.option("--batch-sizes", callback=_int_list, default="1,16", show_default=True, metavar="B1,B2,...",
              help="Predict batch sizes.")
@click.option("--max-test", type=click.IntRange(min=1), default=None,
              help="Predict on at most this many test images (evenly spaced) [all].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed fits / predicts per setting, interleaved with floors; ratios are "
                   "fastest run / fastest floor.")
@_common_run_options
@click.pass_context
def benchmark(ctx: click.Context, data: str, output: Path, preset: str, ratios, batch_sizes,
              max_test: int | None, repeats: int, device: str, threads: int | None, quiet: bool,
              **config_params: Any) -> None:
    """Fit and predict timings of a preset on DATA (a category folder with train/good and test/,
    or a category name under ../shared/data) against the floor: fit / floor, predict / floor per
    batch size, the read / extract / search / post split, images/s, peak memory, bank MB."""
    import shlex

    overrides = given_overrides(ctx, config_params)
    build_config(preset, overrides)
    _setup_threads(threads)
    from patchbank.studies.speed import run_benchmark, summary_lines, write_json

    command = "patchbank benchmark " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    result = run_benchmark(data, preset=preset, overrides=overrides, ratios=ratios,
                           batch_sizes=batch_sizes, device=device, max_test=max_test,
                           progress=not quiet, command=command, repeats=repeats)
    write_json(result, output)
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {output}")


_with_config_options(benchmark)


if __name__ == "__main__":  # pragma: no cover
    main()
