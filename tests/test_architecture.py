"""The shape of the code base: import graph, layering, packaging, one home for the fee.

Static checks over the flat top-level modules (DESIGN.md, "Layout"). Fast, no network:
everything is read with ``ast``, ``configparser`` and ``tomllib``; one check imports
store.py in a subprocess.

What counts as an import (decided here, used by every check below):

* ``import x`` / ``from x import y`` / ``importlib.import_module("x")`` /
  ``__import__("x")`` at any depth of a file, including inside functions, methods,
  ``try`` blocks and ``if`` branches: a lazy import still runs, so it still couples the two
  modules, and a cycle that only a deferred import keeps from crashing is still a cycle.
* Imports under ``if TYPE_CHECKING:`` (the body, not its ``else``) never run. The cycle
  check leaves them out (annotations are strings under ``from __future__ import
  annotations``), but the layering checks of domain.py and market_rules.py count them:
  the bottom layer depends on nothing of the project, not even for type hints.
* Relative imports do not occur in flat modules and are ignored.

The fee check looks for 0.001 written as a float (``0.001``, ``1e-3``) or as
``Decimal("0.001")`` / ``float("0.001")``, given to a name containing "fee" in an
assignment, a keyword argument, a parameter default or a dict key, or returned by a
function whose name contains "fee". Other 0.001s (timeouts, lot sizes) are not the fee.
"""
from __future__ import annotations

import ast
import configparser
import json
import math
import os
import subprocess
import sys
import tomllib
import unittest
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top-level *.py files that are not part of the installed product.
NOT_PACKAGED = {"bench.py", "bench_kit.py", "bench_streams.py", "bench_backtest.py", "bench_hyperopt.py", "soak.py", "test_optimizations.py",
                "setup.py", "conftest.py"}

# What store.py (persistence) must not drag in: the numeric stack and the decision layer.
STORE_MUST_NOT_LOAD = ("numpy", "ml_model", "strategy")

FEE_RATE = 0.001
FEE_HOME = "market_rules.py"


# -- reading the code ------------------------------------------------------------------------

def top_level_files() -> list[Path]:
    return sorted(p for p in ROOT.glob("*.py") if p.is_file())


def project_modules() -> set[str]:
    """Every top-level module name, product or not (bench, test_optimizations)."""
    return {p.stem for p in top_level_files()}


def product_files() -> list[Path]:
    return [p for p in top_level_files() if p.name not in NOT_PACKAGED]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def parse(path: Path) -> ast.Module:
    return ast.parse(read(path), filename=str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


@dataclass(frozen=True)
class Import:
    module: str          # top-level name imported, e.g. "numpy" for "import numpy.linalg"
    line: int
    type_checking: bool  # only under `if TYPE_CHECKING:`


class _ImportCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.imports: list[Import] = []
        self._type_checking = 0

    def _add(self, dotted: str, node: ast.AST) -> None:
        self.imports.append(Import(dotted.split(".")[0], node.lineno, self._type_checking > 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.visit(node.test)
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def imports_of(path: Path) -> list[Import]:
    collector = _ImportCollector()
    collector.visit(parse(path))
    return collector.imports


def project_imports(path: Path, *, type_checking: bool) -> dict[str, list[int]]:
    """Project modules imported by `path` -> the lines that import them."""
    modules = project_modules()
    found: dict[str, list[int]] = {}
    for imp in imports_of(path):
        if imp.module in modules and imp.module != path.stem and (type_checking or not imp.type_checking):
            found.setdefault(imp.module, []).append(imp.line)
    return found


def import_graph() -> dict[str, dict[str, list[int]]]:
    """Runtime import graph of every top-level module: module -> {imported: lines}."""
    return {p.stem: project_imports(p, type_checking=False) for p in top_level_files()}


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
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
            if len(component) > 1 or v in graph.get(v, {}):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def one_cycle(graph: dict[str, dict[str, list[int]]], component: list[str]) -> list[str]:
    """A concrete cycle inside a strongly connected component: [a, b, ..., a]."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}

    def walk(v: str) -> list[str] | None:
        for w in sorted(graph[v]):
            if w == start:
                return path + [start]
            if w in members and w not in seen:
                seen.add(w)
                path.append(w)
                found = walk(w)
                if found:
                    return found
                path.pop()
        return None

    return walk(start) or component


# -- reading the packaging -------------------------------------------------------------------

def _lines(value: str) -> list[str]:
    return [line.split("#")[0].strip() for line in value.splitlines()
            if line.split("#")[0].strip()]


def read_setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def read_pyproject() -> dict:
    path = ROOT / "pyproject.toml"
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def packaged_modules() -> dict[str, list[str]]:
    """Where py_modules is declared -> the modules it lists (ideally exactly one source)."""
    sources: dict[str, list[str]] = {}
    cfg = read_setup_cfg()
    if cfg.has_option("options", "py_modules"):
        sources["setup.cfg [options] py_modules"] = _lines(cfg.get("options", "py_modules"))
    tool = read_pyproject().get("tool", {}).get("setuptools", {})
    if "py-modules" in tool:
        sources["pyproject.toml [tool.setuptools] py-modules"] = list(tool["py-modules"])
    return sources


def pinned_requirements() -> list[str]:
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    return [line for line in _lines(text) if not line.startswith("-")]


# -- the fee literal -------------------------------------------------------------------------

def _is_fee_literal(node: ast.AST) -> bool:
    """0.001 as a float literal, or spelled as Decimal("0.001") / float("0.001")."""
    if isinstance(node, ast.Constant) and type(node.value) is float:
        return math.isclose(node.value, FEE_RATE, rel_tol=0, abs_tol=1e-15)
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        arg = node.args[0]
        if name in ("Decimal", "float") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            try:
                return math.isclose(float(arg.value), FEE_RATE, rel_tol=0, abs_tol=1e-15)
            except ValueError:
                return False
    return False


def _names(node: ast.AST | None) -> list[str]:
    """Identifiers in an assignment target: names, attributes, string subscripts."""
    if node is None:
        return []
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr)
        elif isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant):
            found.append(str(sub.slice.value))
    return found


def _fee_named(names: list[str]) -> bool:
    return any("fee" in n.lower() for n in names)


def fee_literals(source: str) -> list[tuple[int, str]]:
    """(line, what) for every 0.001 given to a fee-named target, keyword, parameter or dict
    key, or returned by a fee-named function, in `source`."""
    tree = ast.parse(source)
    hits: list[tuple[int, str]] = []

    def check(names: list[str], value: ast.AST | None, what: str) -> None:
        if value is not None and _fee_named(names):
            for sub in ast.walk(value):
                if _is_fee_literal(sub):
                    hits.append((sub.lineno, f"{what} {'/'.join(names)}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            check([n for t in node.targets for n in _names(t)], node.value, "assignment to")
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            check(_names(node.target), node.value, "assignment to")
        elif isinstance(node, ast.keyword) and node.arg:
            check([node.arg], node.value, "keyword")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    check([key.value], value, "dict key")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
                check([arg.arg], default, "parameter")
            for arg, default in zip(args.kwonlyargs, args.kw_defaults):
                check([arg.arg], default, "parameter")
            if not isinstance(node, ast.Lambda):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Return):
                        check([node.name], sub.value, "return value of")
    return sorted(set(hits))


# -- the checks ------------------------------------------------------------------------------

class ImportGraphTest(unittest.TestCase):
    def test_the_graph_sees_the_modules(self) -> None:
        graph = import_graph()
        self.assertIn("bot", graph)
        self.assertTrue(any(graph.values()), "no project import found at all: the parser is broken")

    def test_no_import_cycle(self) -> None:
        graph = import_graph()
        cycles = []
        for component in strongly_connected(graph):
            cycle = one_cycle(graph, component)
            edges = ", ".join(f"{a}.py:{graph[a][b][0]} imports {b}" for a, b in zip(cycle, cycle[1:]))
            cycles.append(f"  {' -> '.join(cycle)}  (modules in the cycle: {', '.join(component)}; "
                          f"{edges})")
        self.assertEqual(cycles, [], "import cycles between top-level modules (counting imports "
                         "inside functions; TYPE_CHECKING-only ones excluded):\n" + "\n".join(cycles))


class LayeringTest(unittest.TestCase):
    def test_domain_imports_no_project_module(self) -> None:
        found = project_imports(ROOT / "domain.py", type_checking=True)
        self.assertEqual(found, {}, "domain.py is the bottom layer and must import nothing of the "
                         f"project (module -> lines): {found}")

    def test_market_rules_imports_only_domain(self) -> None:
        found = project_imports(ROOT / "market_rules.py", type_checking=True)
        extra = {m: lines for m, lines in found.items() if m != "domain"}
        self.assertEqual(extra, {}, "market_rules.py may import only domain (module -> lines): "
                         f"{extra}")

    def test_protections_and_the_edge_gate_stand_on_domain_alone(self) -> None:
        """Locks and the gate's verdict are pure functions of plain data: nothing of the
        exchange, the store or the model may creep in."""
        for name, allowed in (("protections.py", {"domain"}), ("edge.py", set()),
                              ("exits.py", {"domain"})):
            found = project_imports(ROOT / name, type_checking=True)
            extra = {m: lines for m, lines in found.items() if m not in allowed}
            with self.subTest(module=name):
                self.assertEqual(extra, {}, f"{name} may import only {sorted(allowed) or 'nothing'} "
                                 f"of the project (module -> lines): {extra}")

    def test_store_does_not_load_numpy_or_the_decision_layer(self) -> None:
        code = ("import json, sys; import store; "
                f"bad = {STORE_MUST_NOT_LOAD!r}; "
                "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(bad))))")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, f"`import store` failed:\n{done.stderr[-2000:]}")
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(loaded, [], f"importing store loads {loaded}; persistence must not "
                         "depend on numpy, the model or the strategy")


class PackagingTest(unittest.TestCase):
    def test_py_modules_are_exactly_the_top_level_modules(self) -> None:
        sources = packaged_modules()
        self.assertEqual(len(sources), 1, "py_modules must be declared in exactly one place, "
                         f"found: {sorted(sources) or 'none'}")
        [(where, listed)] = sources.items()
        self.assertEqual(len(listed), len(set(listed)), f"{where} lists a module twice: {listed}")
        expected = {p.stem for p in product_files()}
        missing, stale = sorted(expected - set(listed)), sorted(set(listed) - expected)
        self.assertEqual((missing, stale), ([], []),
                         f"{where} is out of date: add {missing or 'nothing'}, remove "
                         f"{stale or 'nothing'} (every top-level *.py except "
                         f"{', '.join(sorted(NOT_PACKAGED))} is installed)")

    def test_install_requires_are_the_pinned_requirements(self) -> None:
        declared = read_setup_cfg().get("options", "install_requires", fallback="").strip()
        if declared.startswith("file:"):    # read from requirements.txt: nothing to keep in sync
            self.assertEqual([f.strip() for f in declared[5:].split(",")], ["requirements.txt"])
        else:
            self.assertEqual(sorted(_lines(declared)), sorted(pinned_requirements()),
                             "setup.cfg install_requires differs from the pins in requirements.txt")

    def test_python_and_console_script(self) -> None:
        cfg = read_setup_cfg()
        self.assertEqual(cfg.get("options", "python_requires", fallback="").strip(), ">=3.11")
        scripts = _lines(cfg.get("options.entry_points", "console_scripts", fallback=""))
        self.assertIn("trading-bot = bot:cli", scripts)
        defined = {n.name for n in parse(ROOT / "bot.py").body if isinstance(n, ast.FunctionDef)}
        self.assertIn("cli", defined, "bot.py must define cli() for the trading-bot script")

    def test_one_source_of_metadata(self) -> None:
        """setup.cfg holds the metadata; pyproject.toml only names the build backend."""
        pyproject = read_pyproject()
        self.assertEqual(pyproject.get("build-system", {}).get("build-backend"),
                         "setuptools.build_meta")
        self.assertNotIn("project", pyproject, "pyproject.toml has a [project] table while "
                         "setup.cfg has [metadata]: keep one source of truth")
        self.assertTrue(read_setup_cfg().has_option("metadata", "name"))


class FeeLiteralTest(unittest.TestCase):
    def test_the_fee_lives_only_in_market_rules(self) -> None:
        self.assertTrue(fee_literals(read(ROOT / FEE_HOME)), f"{FEE_HOME} should define the fee "
                        f"({FEE_RATE}); if it moved, update FEE_HOME here")
        found = [f"  {p.name}:{line}: {FEE_RATE} in {what}" for p in product_files()
                 if p.name != FEE_HOME for line, what in fee_literals(read(p))]
        self.assertEqual(found, [], f"the fee rate {FEE_RATE} is written outside {FEE_HOME}; "
                         "import it from there instead:\n" + "\n".join(found))

    def test_the_detector_sees_each_spelling(self) -> None:
        cases = {"FEE_RATE = 0.001": 1, "fee_rate: float = 1e-3": 1, "f(fee=0.001)": 1,
                 "def f(taker_fee=0.001): pass": 1, "x = {'fee': 0.001}": 1,
                 "self.fee = Decimal('0.001')": 1, "def _fee_rate():\n    return m or 0.001": 1,
                 "timeout = 0.001": 0, "MIN_NOTIONAL = {'ETH': 0.001}": 0, "fee = 0.002": 0}
        for source, count in cases.items():
            with self.subTest(source=source):
                hits = fee_literals(source)
                self.assertEqual(len(hits), count, hits)


if __name__ == "__main__":
    unittest.main()
