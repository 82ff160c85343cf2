"""Mutation testing of the scoring, anomaly-map, calibration, metrics, detector, inference,
aspect, feature and image-coordinate modules: a small AST-based runner (see docs/testing.md for the results and why not mutmut).

    nice -n 5 python benchmarks/mutation.py run                 # every module, 2 workers
    nice -n 5 python benchmarks/mutation.py run --module scoring --workers 1
    python benchmarks/mutation.py report                        # counts + survivors (markdown)
    python benchmarks/mutation.py list --module scoring         # the mutants, without running them
    python benchmarks/mutation.py show scoring:17               # one mutant's diff

Not run in CI (slow: 532 mutants, about 14 min on 2 cores).  Needs nothing beyond the test extras.

How it works
------------
1. Coverage pass: the chosen fast test files (``TEST_FILES``, ``-m "not realdata"``) run once in
   a child process with a profiler hook that records, per test, which functions of the target
   modules it calls -- including the calls made while setting up the fixtures it uses (so a test
   that reads the session fixture ``fitted`` counts as covering ``Detector.fit``).  The pass must
   be green; it also gives each test's duration.
2. Mutants: every module is parsed, and each of these nodes gives one mutant (outside docstrings,
   annotations, ``raise`` statements, f-strings and ``warnings.warn(...)`` calls, i.e. outside
   messages): a binary or augmented operator (+ <-> -, * <-> /, // -> /, % -> /, ** -> *,
   << <-> >>, & <-> |, ^ -> &), each comparison operator (< <-> <=, > <-> >=, == <-> !=,
   is <-> is not, in <-> not in), and <-> or, a removed unary ``not`` / ``-`` / ``~``, a number
   constant n -> n + 1, True <-> False, and ``min`` <-> ``max`` / ``argmin`` <-> ``argmax`` calls.
   Decorated functions (``@torch.inference_mode()``), properties and module-level lambdas are
   mutated too.
3. Each mutant: the parent process (which has imported torch, numpy, scipy, pytest, ... but not
   patchbank) compiles the mutated module and forks; the child installs an import hook that
   serves the mutated code for that one module and runs ``pytest -x -p no:randomly`` on the
   tests that cover the mutated function (fastest first) -- for module-level code, every test
   touching the module.  Exit 0 = survived, a test failure or error = killed, over
   ``3 x (covering tests' time) + 30 s`` = timeout, no covering test = no_tests.
4. Results are appended to ``mutation-work/results.jsonl`` keyed by the module's source hash, so
   an interrupted run resumes, and an edited module is re-run.  ``report`` prints the table.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutation-work"

MODULES = {
    "scoring": "patchbank.pipeline.scoring",
    "anomaly_map": "patchbank.pipeline.anomaly_map",
    "calibration": "patchbank.pipeline.calibration",
    "conformal": "patchbank.pipeline.conformal",
    "focus": "patchbank.pipeline.focus",
    "metrics": "patchbank.evaluation.metrics",
    "detector": "patchbank.detector",
    "inference": "patchbank.pipeline.inference",
    "aspect": "patchbank.io.aspect",
    "features": "patchbank.pipeline.features",
    "image_coords": "patchbank.io.image_coords",
    "train_shape": "patchbank.io.train_shape",
}

# Fast test files that exercise the modules (test_threads.py is left out: it runs
# patchbank in a subprocess, which never sees the mutated module).
TEST_FILES = [
    "tests/test_pipeline_parts.py", "tests/test_wiring.py", "tests/test_metrics.py",
    "tests/test_detector.py", "tests/test_struct_detector.py", "tests/test_legacy_models.py",
    "tests/test_evaluation_parts.py", "tests/test_evaluate.py", "tests/test_bad_fit_inputs.py",
    "tests/test_search_perf.py", "tests/test_structure.py", "tests/test_false_positive_rate.py",
    "tests/test_multi.py", "tests/test_aspect.py", "tests/test_crop_at.py", "tests/test_image_coords.py",
    "tests/test_cuda_graphs.py", "tests/test_model_weights_option.py", "tests/test_train_shape.py",
    "tests/test_whole_image_check.py", "tests/test_focus_check.py",
]
TEST_GLOBS = ["tests/test_mutation_kills_*.py"]
# --assert=plain and the disabled plugins only save start-up time (assertion rewriting, the
# hypothesis plugin's import, gc passes at exit): about 6 s -> 0.5 s per mutant.
PYTEST_ARGS = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-m", "not realdata",
               "-W", "ignore::UserWarning", "--assert=plain", "-p", "no:hypothesispytest",
               "-p", "no:unraisableexception", "-p", "no:threadexception", "-p", "no:benchmark"]


def module_path(name: str) -> Path:
    return ROOT / "src" / (MODULES[name].replace(".", "/") + ".py")


def test_files() -> list[str]:
    files = [f for f in TEST_FILES if (ROOT / f).exists()]
    for g in TEST_GLOBS:
        files += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(g))
    return files


# ------------------------------------------------------------------------------ mutations
_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Mod: ast.Div, ast.Pow: ast.Mult, ast.LShift: ast.RShift,
          ast.RShift: ast.LShift, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitAnd}
_CMPOP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_SWAP_NAMES = {"min": "max", "max": "min", "argmin": "argmax", "argmax": "argmin"}
_OPSYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
          ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|",
          ast.BitXor: "^", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
          ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
          ast.And: "and", ast.Or: "or", ast.Not: "not", ast.USub: "-", ast.Invert: "~"}


def _is_warn_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "warn")


def _walk(node, parent=None, field=None, index=None, skip=False, func=None):
    """Deterministic DFS: (node, parent, field, index, skip, outermost function or lambda)."""
    if func is None and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        func = node
    yield node, parent, field, index, skip, func
    inner_skip = skip or isinstance(node, (ast.Raise, ast.JoinedStr)) or _is_warn_call(node)
    for fname, value in ast.iter_fields(node):
        s = inner_skip or fname in ("annotation", "returns")
        if isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, ast.AST):
                    yield from _walk(v, node, fname, i, s, func)
        elif isinstance(value, ast.AST):
            yield from _walk(value, node, fname, None, s, func)


def _mutations_of(node, parent, field, index):
    """[(sub, description)] for one node; ``sub`` picks the variant (e.g. which compare op)."""
    out = []
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP:
        new = _BINOP[type(node.op)]
        out.append((0, f"{_OPSYM[type(node.op)]} -> {_OPSYM[new]}"))
    elif isinstance(node, ast.Compare):
        for j, op in enumerate(node.ops):
            if type(op) in _CMPOP:
                out.append((j, f"{_OPSYM[type(op)]} -> {_OPSYM[_CMPOP[type(op)]]}"))
    elif isinstance(node, ast.BoolOp):
        out.append((0, f"{_OPSYM[type(node.op)]} -> {'or' if isinstance(node.op, ast.And) else 'and'}"))
    elif isinstance(node, ast.UnaryOp) and type(node.op) in (ast.Not, ast.USub, ast.Invert):
        out.append((0, f"remove unary {_OPSYM[type(node.op)]}"))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes)) \
            and node.value is not None and node.value is not Ellipsis:
        v = node.value
        if isinstance(v, bool):
            out.append((0, f"{v} -> {not v}"))
        elif isinstance(v, int):
            out.append((0, f"{v} -> {v + 1}"))
        elif isinstance(v, float):
            out.append((0, f"{v!r} -> {v + 1.0!r}"))
    elif isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in ("min", "max"):
            out.append((0, f"{f.id}( -> {_SWAP_NAMES[f.id]}("))
        elif isinstance(f, ast.Attribute) and f.attr in _SWAP_NAMES:
            out.append((0, f".{f.attr}( -> .{_SWAP_NAMES[f.attr]}("))
    return out


def _apply(node, parent, field, index, sub):
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        node.op = _BINOP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[sub] = _CMPOP[type(node.ops[sub])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        if index is None:
            setattr(parent, field, node.operand)
        else:
            getattr(parent, field)[index] = node.operand
    elif isinstance(node, ast.Constant):
        v = node.value
        node.value = (not v) if isinstance(v, bool) else v + (1 if isinstance(v, int) else 1.0)
    elif isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            node.func.id = _SWAP_NAMES[node.func.id]
        else:
            node.func.attr = _SWAP_NAMES[node.func.attr]


def enumerate_mutants(name: str) -> tuple[str, list[dict]]:
    """(source sha, mutants) of module ``name``; each mutant: id, line, col, op, function range."""
    src = module_path(name).read_text()
    sha = hashlib.sha256(src.encode()).hexdigest()[:16]
    tree = ast.parse(src)
    lines = src.splitlines()
    muts = []
    for k, (node, parent, field, index, skip, func) in enumerate(_walk(tree)):
        if skip or (isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant)):
            continue
        for sub, desc in _mutations_of(node, parent, field, index):
            if func is not None:
                start = min([func.lineno] + [d.lineno for d in getattr(func, "decorator_list", [])])
                rng = [start, func.end_lineno]
                fname = getattr(func, "name", "<lambda>")
            else:
                rng, fname = None, "<module>"
            muts.append({"id": f"{name}:{len(muts)}", "node": k, "sub": sub, "line": node.lineno,
                         "col": node.col_offset, "op": desc, "function": fname, "range": rng,
                         "text": lines[node.lineno - 1].strip()})
    return sha, muts


def mutated_code(name: str, mutant: dict):
    path = module_path(name)
    tree = ast.parse(path.read_text())
    for k, (node, parent, field, index, _, _) in enumerate(_walk(tree)):
        if k == mutant["node"]:
            _apply(node, parent, field, index, mutant["sub"])
            break
    ast.fix_missing_locations(tree)
    return compile(tree, str(path), "exec"), tree


def mutant_diff(name: str, mutant: dict) -> str:
    _, tree = mutated_code(name, mutant)
    new_lines = ast.unparse(tree).splitlines()
    # locate the mutated statement by unparsing the original too (same structure but one node)
    old_lines = ast.unparse(ast.parse(module_path(name).read_text())).splitlines()
    for a, b in zip(old_lines, new_lines):
        if a != b:
            return f"- {a.strip()}\n+ {b.strip()}"
    return "(no textual change)"


# ------------------------------------------------------------------------------ child processes
class _Loader(importlib.abc.Loader):
    def __init__(self, code, path):
        self.code, self.path = code, path

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.path
        exec(self.code, module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, fullname, code, path):
        self.fullname, self.loader, self.path = fullname, _Loader(code, path), path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname:
            return None
        return importlib.util.spec_from_loader(fullname, self.loader, origin=self.path)


class _CoveragePlugin:
    """Per test: the (file, first line) of every target-module code object called, during the
    test and during the setup of the fixtures it uses (attributed by fixture name)."""

    def __init__(self, files):
        self.files = {os.path.realpath(f) for f in files}
        self._real: dict[str, bool] = {}
        self.bucket = None
        self.by_test: dict[str, set] = {}
        self.by_fixture: dict[str, set] = {}
        self.fixtures_of: dict[str, list] = {}
        self.duration: dict[str, float] = {}
        self.failed: list[str] = []

    def profile(self, frame, event, arg):
        if event != "call" or self.bucket is None:
            return
        co = frame.f_code
        hit = self._real.get(co.co_filename)
        if hit is None:
            hit = self._real[co.co_filename] = os.path.realpath(co.co_filename) in self.files
        if hit:
            self.bucket.add((os.path.realpath(co.co_filename), co.co_firstlineno))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.bucket = self.by_test.setdefault(item.nodeid, set())
        self.fixtures_of[item.nodeid] = list(item.fixturenames)
        self._t0 = time.perf_counter()

    def pytest_runtest_logfinish(self, nodeid, location):
        self.duration[nodeid] = time.perf_counter() - self._t0
        self.bucket = None

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)


def _fixture_wrapper(plugin):
    class _Fix:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_fixture_setup(self, fixturedef, request):
            prev = plugin.bucket
            plugin.bucket = plugin.by_fixture.setdefault(fixturedef.argname, set())
            yield
            plugin.bucket = prev
    return _Fix()


def _redirect(log: Path):
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def coverage_pass() -> dict:
    """Run the test files once with the coverage plugin (in a child); returns the map."""
    WORK.mkdir(exist_ok=True)
    out = WORK / "coverage.json"
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            _redirect(WORK / "coverage.log")
            import threading

            plugin = _CoveragePlugin([str(module_path(n)) for n in MODULES])
            sys.setprofile(plugin.profile)
            threading.setprofile(plugin.profile)
            os.chdir(ROOT)
            rc = pytest.main([*PYTEST_ARGS, "-p", "no:randomly", f"--basetemp={WORK / 'tmp-cov'}",
                              *test_files()], plugins=[plugin, _fixture_wrapper(plugin)])
            sys.setprofile(None)
            tests = {}
            for nodeid, hits in plugin.by_test.items():
                allhits = set(hits)
                for fx in plugin.fixtures_of.get(nodeid, []):
                    allhits |= plugin.by_fixture.get(fx, set())
                tests[nodeid] = {"duration": plugin.duration.get(nodeid, 0.0),
                                 "hits": sorted([f, ln] for f, ln in allhits)}
            out.write_text(json.dumps({"rc": int(rc), "failed": plugin.failed, "tests": tests}))
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001
            print("coverage pass crashed:", repr(exc), file=sys.stderr)
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    data = json.loads(out.read_text()) if out.exists() else None
    if data is None or data["rc"] != 0:
        sys.exit(f"coverage pass failed (see {WORK / 'coverage.log'}): tests must be green first")
    return data


def covering_tests(cov: dict, path: Path, rng) -> list[tuple[str, float]]:
    p = os.path.realpath(path)
    out = []
    for nodeid, t in cov["tests"].items():
        for f, ln in t["hits"]:
            if f == p and (rng is None or rng[0] <= ln <= rng[1]):
                out.append((nodeid, t["duration"]))
                break
    return sorted(out, key=lambda x: x[1])


def _run_child(fullname: str, code, path: str, nodeids: list[str], basetemp: Path, log: Path):
    os.setpgid(0, 0)
    _redirect(log)
    try:
        sys.meta_path.insert(0, _Finder(fullname, code, path))
        os.chdir(ROOT)
        rc = pytest.main([*PYTEST_ARGS, "-x", f"--basetemp={basetemp}", *nodeids])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc))
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(4)


def _killed_by(log: Path) -> str:
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(("FAILED ", "ERROR ")):
                return line.split(" - ")[0][:200]
    except OSError:
        pass
    return ""


def preimport():
    """Import the heavy third-party libraries once in the parent (children inherit them)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("PATCHBANK_TEST_THREADS", "1")
    for mod in ("numpy", "scipy.ndimage", "scipy.stats", "torch", "torch.nn.functional", "torchvision",
                "timm", "PIL.Image", "safetensors.torch", "tqdm.auto", "click", "sklearn.metrics",
                "faiss", "matplotlib", "pytest"):
        try:
            __import__(mod)
        except Exception:  # noqa: BLE001 - optional
            pass
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")


def load_results() -> dict:
    res = {}
    f = WORK / "results.jsonl"
    if f.exists():
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                res[(r["sha"], r["id"])] = r
    return res


def cmd_run(args):
    WORK.mkdir(exist_ok=True)
    preimport()
    names = args.module or list(MODULES)
    log = open(WORK / "progress.log", "a", buffering=1)
    t0 = time.time()
    log.write(f"== run {time.strftime('%Y-%m-%d %H:%M:%S')} modules={names} workers={args.workers}\n")
    cov = json.loads((WORK / "coverage.json").read_text()) if args.reuse_coverage else coverage_pass()
    log.write(f"coverage pass: {len(cov['tests'])} tests, {time.time() - t0:.0f} s\n")
    done = load_results()
    todo = []
    for name in names:
        sha, muts = enumerate_mutants(name)
        for m in muts:
            if args.only and m["id"] not in args.only:
                continue
            if (sha, m["id"]) in done and not args.rerun:
                continue
            tests = covering_tests(cov, module_path(name), m["range"])
            todo.append((name, sha, m, tests))
    log.write(f"{len(todo)} mutants to run\n")
    running: dict[int, tuple] = {}
    out = open(WORK / "results.jsonl", "a", buffering=1)
    slots = list(range(args.workers))
    n_done = 0

    def finish(pid, status_code, timed_out=False):
        nonlocal n_done
        name, sha, m, tests, start, deadline, slot, mlog = running.pop(pid)
        slots.append(slot)
        if timed_out:
            status = "timeout"
        else:
            rc = os.waitstatus_to_exitcode(status_code)
            status = "survived" if rc == 0 else ("no_tests" if rc == 5 else "killed")
        rec = dict(m, sha=sha, module=name, status=status, secs=round(time.time() - start, 2),
                   n_tests=len(tests), killed_by=_killed_by(mlog) if status == "killed" else "")
        if status == "survived":
            (WORK / "survivors").mkdir(exist_ok=True)
            mlog.replace(WORK / "survivors" / (m["id"].replace(":", "_") + ".log"))
        else:
            mlog.unlink(missing_ok=True)
        out.write(json.dumps(rec) + "\n")
        n_done += 1
        log.write(f"[{n_done}/{len(todo)} {time.time() - t0:.0f}s] {m['id']} L{m['line']} {m['op']:<16} "
                  f"{status:<8} {rec['secs']:.1f}s {rec['killed_by']}\n")

    queue = list(todo)
    while queue or running:
        while queue and slots:
            name, sha, m, tests = queue.pop(0)
            if not tests:
                rec = dict(m, sha=sha, module=name, status="no_tests", secs=0, n_tests=0, killed_by="")
                out.write(json.dumps(rec) + "\n")
                n_done += 1
                log.write(f"[{n_done}/{len(todo)}] {m['id']} no covering test\n")
                continue
            code, _ = mutated_code(name, m)
            slot = slots.pop(0)
            mlog = WORK / f"worker{slot}.log"
            budget = 3 * sum(d for _, d in tests) + 30
            pid = os.fork()
            if pid == 0:
                _run_child(MODULES[name], code, str(module_path(name)), [t for t, _ in tests],
                           WORK / f"tmp{slot}", mlog)
            running[pid] = (name, sha, m, tests, time.time(), time.time() + budget, slot, mlog)
        time.sleep(0.05)
        for pid in list(running):
            got, status_code = os.waitpid(pid, os.WNOHANG)
            if got:
                finish(pid, status_code)
            elif time.time() > running[pid][5]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                finish(pid, 0, timed_out=True)
    log.write(f"== done in {time.time() - t0:.0f} s\n")


def _latest(names):
    res = load_results()
    rows = {}
    for name in names:
        sha, muts = enumerate_mutants(name)
        rows[name] = [res.get((sha, m["id"]), dict(m, status="not_run")) for m in muts]
    return rows


def cmd_report(args):
    names = args.module or list(MODULES)
    rows = _latest(names)
    equiv = _equivalent_ids()
    print("| module | mutants | killed | survived | equivalent | timeout | no test | not run | score |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = dict(n=0, k=0, s=0, e=0, t=0, z=0, r=0)
    for name in names:
        c = dict(n=len(rows[name]), k=0, s=0, e=0, t=0, z=0, r=0)
        for r in rows[name]:
            st = r["status"]
            if st == "survived" and r["id"] in equiv:
                c["e"] += 1
            else:
                c[{"killed": "k", "survived": "s", "timeout": "t", "no_tests": "z", "not_run": "r"}[st]] += 1
        for key in tot:
            tot[key] += c[key]
        print(_row(name, c))
    print(_row("**all**", tot))
    if args.survivors:
        print()
        for name in names:
            for r in rows[name]:
                if r["status"] in ("survived", "no_tests", "timeout"):
                    tag = " (equivalent)" if r["id"] in equiv else ""
                    print(f"{r['id']} {r['status']}{tag} {MODULES[name]}:{r['line']} [{r['function']}] "
                          f"{r['op']}  | {r['text']}")


def _row(name, c):
    denom = c["n"] - c["e"] - c["r"]
    score = f"{100.0 * (c['k'] + c['t']) / denom:.1f}%" if denom else "-"
    return (f"| {name} | {c['n']} | {c['k']} | {c['s']} | {c['e']} | {c['t']} | {c['z']} | {c['r']} "
            f"| {score} |")


def _equivalent_ids() -> set:
    """Mutant ids of class ``equivalent`` or ``unreachable`` in docs/testing.md's table (rows
    ``| `module:N` | where | mutation | class | reason |`` under a heading naming "equivalent");
    the other classes there (performance, rounding, arbitrary) still count as survivors."""
    doc = ROOT / "docs" / "testing.md"
    ids = set()
    if doc.exists():
        in_section = False
        for line in doc.read_text().splitlines():
            if line.startswith("#"):
                in_section = "equivalent" in line.lower()
            elif in_section and line.startswith("| `"):
                cells = [c.strip() for c in line.split("|")]
                if len(cells) > 4 and cells[4] in ("equivalent", "unreachable"):
                    ids.add(line.split("`")[1])
    return ids


def cmd_list(args):
    for name in args.module or list(MODULES):
        _, muts = enumerate_mutants(name)
        for m in muts:
            print(f"{m['id']} L{m['line']} [{m['function']}] {m['op']} | {m['text']}")


def cmd_show(args):
    for ident in args.ids:
        name = ident.split(":")[0]
        _, muts = enumerate_mutants(name)
        m = next(x for x in muts if x["id"] == ident)
        print(f"# {ident} {MODULES[name]}:{m['line']} [{m['function']}] {m['op']}")
        print(mutant_diff(name, m))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--module", action="append", choices=list(MODULES))
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--only", nargs="*", help="mutant ids (module:N) to run")
    r.add_argument("--rerun", action="store_true", help="run mutants that already have a result")
    r.add_argument("--reuse-coverage", action="store_true", help="skip the coverage pass")
    rep = sub.add_parser("report")
    rep.add_argument("--module", action="append", choices=list(MODULES))
    rep.add_argument("--survivors", action="store_true")
    li = sub.add_parser("list")
    li.add_argument("--module", action="append", choices=list(MODULES))
    sh = sub.add_parser("show")
    sh.add_argument("ids", nargs="+")
    args = p.parse_args(argv)
    {"run": cmd_run, "report": cmd_report, "list": cmd_list, "show": cmd_show}[args.cmd](args)


if __name__ == "__main__":
    main()
