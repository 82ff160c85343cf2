"""The package's shape, checked by reading the source with ``ast`` (nothing is imported).

* Layering: a module imports its own subpackage and lower layers only; never a higher layer,
  never another subpackage of its own layer (``LAYERS`` below, top to bottom).
* No import cycles between modules (function-level imports included).
* No private names across modules: no ``from patchbank.x import _y`` and no ``x._y`` on an
  imported patchbank module, outside the module that defines them.
* No function over ``MAX_FUNCTION_LINES`` lines unless a ``# long: why`` comment on the line
  above its ``def`` (or in its first lines, up to the first statement) says why.

Each check is a function of a source root, so the tests at the bottom also run it on a planted
fake tree to prove it reports what it should.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import patchbank

PACKAGE = "patchbank"
SRC = Path(patchbank.__file__).resolve().parent.parent  # the folder holding patchbank/
MAX_FUNCTION_LINES = 60

# top to bottom; a module's layer is that of its first two name components ("patchbank.io")
LAYERS = {
    9: ("cli",),
    8: ("studies", "service", "report", "distributed"),
    7: ("evaluation", "export"),
    6: ("multi",),
    5: ("detector",),
    4: ("pipeline",),
    3: ("sampling", "search", "backbones"),
    2: ("io",),
    1: ("linalg", "runtime"),
    0: ("config", "errors"),
}
LAYER_OF = {f"{PACKAGE}.{part}": layer for layer, parts in LAYERS.items() for part in parts}
# Deliberate exception to "no sideways imports" inside layer 0: Config raises ConfigError, and
# errors imports nothing from patchbank, so errors is the floor under config.
ALLOWED_SIDEWAYS = {(f"{PACKAGE}.config", f"{PACKAGE}.errors")}
EXEMPT = {PACKAGE}  # patchbank/__init__.py re-exports Detector etc. lazily via __getattr__


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` (module) at ``file:line`` imports ``target``."""

    file: str
    line: int
    source: str
    target: str
    names: tuple[str, ...]   # the names of ``from target import ...`` (() for ``import target``)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` of every .py file under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    """The absolute module of ``from <node.module> import ...`` written in module ``source``."""
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a ``package`` module in the tree: module level and inside functions,
    ``import a.b``, ``from a import b`` (b a submodule: the edge goes to ``a.b``), relative
    imports resolved."""
    mods = modules(root, package)
    out = []
    for source, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = os.path.relpath(path, root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out.append(Import(rel, node.lineno, source, alias.name, ()))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(node, source, _is_package(path))
                plain = [a.name for a in node.names if f"{base}.{a.name}" not in mods]
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:   # a submodule
                        out.append(Import(rel, node.lineno, source, f"{base}.{alias.name}", ()))
                if plain:
                    out.append(Import(rel, node.lineno, source, base, tuple(plain)))
    return [i for i in out if i.target == package or i.target.startswith(package + ".")]


def layer_of(module: str) -> int | None:
    """The layer of a patchbank module (None: the package root or an unlisted subpackage)."""
    return LAYER_OF.get(".".join(module.split(".")[:2]))


def layer_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """``file:line source -> target (why)`` for every import that points up or sideways, and
    every module in no layer."""
    found = []
    for mod, path in modules(root, package).items():
        if mod not in EXEMPT and layer_of(mod) is None:
            found.append(f"{os.path.relpath(path, root)}: module {mod} is in no layer (add it to LAYERS)")
    for imp in imports(root, package):
        if imp.source in EXEMPT:
            continue
        src_top, dst_top = (".".join(m.split(".")[:2]) for m in (imp.source, imp.target))
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or src_top == dst_top:
            continue
        if imp.target in EXEMPT:
            # `import patchbank` binds the namespace and `from patchbank import __version__`
            # reads metadata the root defines eagerly (importing only layer 0): both fine
            if [n for n in imp.names if not (n.startswith("__") and n.endswith("__"))]:
                    found.append(f"{imp.where()} {imp.source} -> {imp.target} (the package root "
                             f"re-exports the top layers; import the defining module)")
        elif dst is None:
            found.append(f"{imp.where()} {imp.source} -> {imp.target} (target in no layer)")
        elif dst > src:
            found.append(f"{imp.where()} {imp.source} -> {imp.target} (upward: layer {src} -> {dst})")
        elif dst == src and (src_top, dst_top) not in ALLOWED_SIDEWAYS:
            found.append(f"{imp.where()} {imp.source} -> {imp.target} (sideways within layer {src})")
    return found


def cycles(root: Path, package: str = PACKAGE) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (function-level
    imports included; the exempt package root left out), each sorted, with the edges inside it."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root, package) if m not in EXEMPT}
    for imp in imports(root, package):
        if imp.source in graph and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:   # Tarjan's algorithm; the package is far below the recursion limit
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_report(root: Path, package: str = PACKAGE) -> list[str]:
    edges = imports(root, package)
    out = []
    for component in cycles(root, package):
        members = set(component)
        inside = sorted({f"{i.where()} {i.source} -> {i.target}" for i in edges
                         if i.source in members and i.target in members and i.source != i.target})
        out.append(f"cycle {' / '.join(component)}: " + "; ".join(inside))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_bindings(tree: ast.AST, source: str, is_package: bool, mods: dict[str, Path],
                     package: str) -> dict[str, str]:
    """Local names bound to patchbank modules anywhere in the file: ``import a.b`` binds ``a``
    (resolved through attributes), ``import a.b as m`` / ``from a import b`` (b a module) bind
    ``m`` / ``b``."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[package] = package
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, source, is_package)
            for alias in node.names:
                if f"{base}.{alias.name}" in mods:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def private_use(root: Path, package: str = PACKAGE) -> list[str]:
    """``file:line source: ...`` for every private name of one patchbank module used in
    another: ``from patchbank.x import _y`` and ``x._y`` on an imported patchbank module.  A
    private submodule may be imported from inside its own package."""
    mods = modules(root, package)
    found = []
    for source, path in mods.items():
        rel = os.path.relpath(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve_from(node, source, _is_package(path))
            if base.split(".")[0] != package or base == source:
                continue
            for alias in node.names:
                own_package = source == base or source.startswith(base + ".")
                if _private(alias.name) and not (f"{base}.{alias.name}" in mods and own_package):
                    found.append(f"{rel}:{node.lineno} {source}: from {base} import {alias.name}")
        bound = _module_bindings(tree, source, _is_package(path), mods, package)
        for node in ast.walk(tree):
            chain = _dotted(node) if isinstance(node, ast.Attribute) else None
            if not chain or chain[0] not in bound or not _private(chain[-1]):
                continue
            module = bound[chain[0]]
            for part in chain[1:-1]:   # patchbank.io.images._x: walk down through submodules
                if f"{module}.{part}" not in mods:
                    module = None
                    break
                module = f"{module}.{part}"
            if module is not None and module != source:
                found.append(f"{rel}:{node.lineno} {source}: {'.'.join(chain)} ({module} is another module)")
    return found


_LONG = re.compile(r"#.*\blong:")


def long_functions(root: Path, package: str = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (n lines)`` for every function longer than ``limit`` lines without a
    ``# long: ...`` comment on the line above it (above its decorators) or between its ``def``
    and its first statement (inclusive)."""
    found = []
    for _, path in modules(root, package).items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = node.end_lineno - node.lineno + 1
            if n <= limit:
                continue
            top = min([node.lineno] + [d.lineno for d in node.decorator_list])
            window = lines[top - 2:top - 1] + lines[node.lineno - 1:node.body[0].lineno]
            if not any(_LONG.search(line) for line in window):
                found.append(f"{os.path.relpath(path, root)}:{node.lineno} {node.name} ({n} lines)")
    return found


def _check(found: list[str], what: str) -> None:
    """Fail listing every violation."""
    assert not found, f"{len(found)} {what}:\n" + "\n".join(found)


# --- the real tree ---------------------------------------------------------------------------

def test_every_module_is_in_a_layer_and_imports_only_downwards():
    _check(layer_violations(SRC), "upward or sideways imports")


def test_no_import_cycles():
    found = _cycle_report(SRC)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_private_names_across_modules():
    _check(private_use(SRC), "private names used from another module")


def test_no_long_functions_without_a_reason():
    _check(long_functions(SRC), f"functions over {MAX_FUNCTION_LINES} lines without '# long:'")


def test_the_checkers_see_the_real_package():
    mods = modules(SRC)
    assert {"patchbank.detector", "patchbank.backbones.registry", "patchbank.io.images"} <= set(mods)
    edges = {(i.source, i.target) for i in imports(SRC)}
    assert ("patchbank.backbones.registry", "patchbank.backbones.batchnorm_folding") in edges
    assert ("patchbank.backbones.registry", "patchbank.errors") in edges


# --- the checkers on a planted tree ----------------------------------------------------------

def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def planted(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    return _plant(tmp_path, {
        "patchbank/__init__.py": "def __getattr__(name):\n    from patchbank.detector import Detector\n",
        "patchbank/errors.py": "",
        "patchbank/config.py": "from patchbank.errors import ConfigError\n",
        "patchbank/multi.py": "from patchbank import Detector\n",
        "patchbank/detector.py": ("from patchbank.sampling import a\nfrom .io import images\n"
                                  "from patchbank import __version__\n"),
        "patchbank/pipeline/__init__.py": "",
        # upward (pipeline is layer 4, detector 5), inside a function
        "patchbank/pipeline/x.py": "import os\n\ndef f():\n    import patchbank.detector\n",
        # a cycle through a function-level relative import, and a sideways import (layer 3)
        "patchbank/sampling/__init__.py": "",
        "patchbank/sampling/a.py": "from patchbank.sampling import b\nfrom patchbank.search import s\n",
        "patchbank/sampling/b.py": "def g():\n    from . import a\n    return a\n",
        "patchbank/search/__init__.py": "",
        "patchbank/search/s.py": "",
        "patchbank/io/__init__.py": "",
        "patchbank/io/images.py": "def _crop():\n    pass\n\n\n" + f"def ok():\n    # long: planted\n{body}\n",
        "patchbank/io/heatmap.py": ("from patchbank.io.images import _crop\n"
                                    "import patchbank.io.images as im\nimport patchbank\n\n"
                                    f"def too_long():\n{body}\n    im._crop()\n"
                                    "    patchbank.io.images._crop()\n    im.__name__\n    im.crop\n"),
        "patchbank/io/_private_helpers.py": "",
        "patchbank/io/user.py": "from patchbank.io import _private_helpers\n",
        "patchbank/runtime/__init__.py": "",
        "patchbank/runtime/t.py": "from patchbank.io import _private_helpers\n",
        "patchbank/newthing.py": "",
    })


def test_layer_checker_reports_planted_upward_and_sideways_imports(planted):
    found = layer_violations(planted)
    text = "\n".join(found)
    assert "patchbank/pipeline/x.py:4 patchbank.pipeline.x -> patchbank.detector (upward: layer 4 -> 5)" in text
    assert "patchbank/sampling/a.py:2 patchbank.sampling.a -> patchbank.search.s (sideways within layer 3)" in text
    assert "patchbank/runtime/t.py:1 patchbank.runtime.t -> patchbank.io._private_helpers (upward: layer 1 -> 2)" in text
    assert "module patchbank.newthing is in no layer" in text
    assert "patchbank/multi.py:1 patchbank.multi -> patchbank (the package root" in text
    # downward imports, a relative one included, same-subpackage imports and the allowed
    # config -> errors are fine; the exempt package root is not checked
    assert len(found) == 5, text


def test_cycle_checker_reports_a_planted_cycle_through_a_function_level_import(planted):
    assert cycles(planted) == [["patchbank.sampling.a", "patchbank.sampling.b"]]
    (report,) = _cycle_report(planted)
    assert "patchbank/sampling/b.py:2 patchbank.sampling.b -> patchbank.sampling.a" in report
    (planted / "patchbank/sampling/b.py").write_text("def g():\n    return 1\n")
    assert cycles(planted) == []


def test_private_checker_reports_planted_uses(planted):
    found = private_use(planted)
    text = "\n".join(found)
    assert "patchbank/io/heatmap.py:1 patchbank.io.heatmap: from patchbank.io.images import _crop" in text
    assert "im._crop (patchbank.io.images is another module)" in text
    assert "patchbank.io.images._crop (patchbank.io.images is another module)" in text
    assert "patchbank/runtime/t.py:1 patchbank.runtime.t: from patchbank.io import _private_helpers" in text
    # a private submodule from inside its package, dunders and public names are fine
    assert len(found) == 4, text


def test_long_function_checker(planted):
    found = long_functions(planted)
    assert found == ["patchbank/io/heatmap.py:5 too_long (66 lines)"]
