"""The import structure of pipeline/, kernels/ and cluster/ (CONVENTIONS.md, "Lessons from our
own code" 3 and 4), read from the source with ``ast``; nothing is imported.

- private names stay in their room: no module takes a ``_name`` of another module of ours,
  neither by ``from m import _name`` nor as ``m._name`` (a private *module* is open to its own
  package only: ``kernels/drift.py`` may use ``kernels._jit``);
- a stage never imports the workflow: only the CLI, the package's lazy API and the job runner
  import ``pipeline.workflow``;
- no import circle among our modules.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING``.
Each failure lists the offending ``file:line``. The last test runs the checks on a small
made-up package, so that each of them is known to fail when it should.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "kernels", "cluster")
WORKFLOW = "pipeline.workflow"
#: the modules that may import the workflow: the CLI (``mlpipe run``, ``mlpipe retrain``),
#: ``pipeline.workflow`` behind the package's lazy ``__getattr__``, and the job runner (it runs the
#: workflow on a cluster).
MAY_IMPORT_WORKFLOW = frozenset({"pipeline.cli", "pipeline.cli_monitor", "pipeline",
                                 "pipeline.jobs"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted; a package is named by its directory ("kernels", not "kernels.__init__")
    path: str  # relative to the scanned root, for messages
    tree: ast.Module
    is_package: bool


@dataclass(frozen=True)
class Use:
    """One reference from a module to another module of ours."""

    importer: str
    where: str  # "path:line"
    target: str  # the module of ours it imports (or reads an attribute of)
    name: str | None  # the name taken from it (None: the module itself)


def scan(root: Path, packages: Sequence[str] = PACKAGES) -> dict[str, Module]:
    """Every .py file under ``root/<package>``, parsed."""
    modules: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).glob("**/*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            modules[name] = Module(name, path.relative_to(root).as_posix(), tree, is_package)
    return modules


def uses(modules: Mapping[str, Module]) -> list[Use]:
    """Every import of one of our modules, and every ``module._attribute`` read through a name
    an import bound to one of our modules."""
    out: list[Use] = []
    for module in modules.values():
        out.extend(_ModuleUses(module, modules).run())
    return out


class _ModuleUses(ast.NodeVisitor):
    """The uses in one module. Names bound by imports are tracked per function scope, so a
    local variable that happens to share a module's name is not taken for it."""

    def __init__(self, module: Module, modules: Mapping[str, Module]) -> None:
        self.module, self.modules = module, modules
        self.scopes: list[dict[str, str | None]] = [{}]
        self.found: list[Use] = []

    def run(self) -> list[Use]:
        self.visit(self.module.tree)
        return self.found

    def _use(self, node: ast.AST, target: str, name: str | None) -> None:
        if target != self.module.name:
            self.found.append(Use(self.module.name, f"{self.module.path}:{node.lineno}",
                                  target, name))

    def _ours(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is one of our modules."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        return None

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        # parameters and assigned names are local for the whole function: they shadow a
        # module bound outside it (None), until an import inside binds them again
        args = node.args
        local: dict[str, str | None] = {
            a.arg: None for a in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                                  *filter(None, [args.vararg, args.kwarg])]}
        local.update((n, None) for n in _assigned(node))
        self.scopes.append(local)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self._ours(alias.name)
            if target is None:
                continue
            self._use(node, target, None)
            if alias.asname:
                self.scopes[-1][alias.asname] = target
            else:  # "import a.b" binds "a"; "a.b.x" is then resolved through it
                self.scopes[-1][alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.name.split(".")
            if not self.module.is_package:
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:  # "from pipeline import artifacts"
                self._use(node, submodule, None)
                self.scopes[-1][alias.asname or alias.name] = submodule
            elif source in self.modules:
                self._use(node, source, alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and isinstance(node.ctx, ast.Load):
            bound = next((scope[value.id] for scope in reversed(self.scopes)
                          if value.id in scope), None)
            if bound is not None:
                dotted = [bound, *reversed(chain)]
                # the deepest module of ours along the chain, and the attribute read from it
                for n in range(len(dotted) - 1, 0, -1):
                    if ".".join(dotted[:n]) in self.modules:
                        self._use(node, ".".join(dotted[:n]), dotted[n])
                        return  # the inner attributes are this same chain
        self.generic_visit(node)


def _assigned(function: ast.AST) -> set[str]:
    """Names a function body assigns (not those of the functions nested in it)."""
    names: set[str] = set()
    todo = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _room(target: str) -> str | None:
    """The package a private module belongs to ("kernels" for "kernels._jit"), or None."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:i])
    return None


def private_uses(found: Sequence[Use]) -> list[str]:
    """``where: importer takes target.name`` for each private name or module used across
    rooms."""
    bad = []
    for use in found:
        room = _room(use.target)
        if room is not None and use.importer != room and not use.importer.startswith(room + "."):
            bad.append(f"{use.where}: {use.importer} takes the private module {use.target}")
        if use.name is not None and _private(use.name):
            bad.append(f"{use.where}: {use.importer} takes {use.target}.{use.name}")
    return sorted(set(bad), key=_place)


def _place(text: str) -> tuple[str, int]:
    """("path", line) of a "path:line..." message, to list findings in file order."""
    path, line = text.split(":", 2)[:2]
    return path, int(line)


def workflow_uses(found: Sequence[Use]) -> list[str]:
    return sorted({f"{u.where}: {u.importer} imports {WORKFLOW}" for u in found
                   if u.target == WORKFLOW and u.importer not in MAY_IMPORT_WORKFLOW},
                  key=_place)


def circles(found: Sequence[Use]) -> list[str]:
    """One cycle per strongly connected component of the import graph, each edge with the
    ``file:line`` of an import that makes it."""
    where: dict[tuple[str, str], str] = {}
    for u in sorted(found, key=lambda u: _place(u.where)):
        where.setdefault((u.importer, u.target), u.where)
    graph: dict[str, set[str]] = {}
    for a, b in where:
        graph.setdefault(a, set()).add(b)
    out = []
    for component in _components(graph):
        if len(component) < 2:
            continue
        cycle = _cycle(graph, component)
        steps = ", ".join(f"{where[a, b]} {a} -> {b}" for a, b in zip(cycle, cycle[1:]))
        out.append(f"{' -> '.join(cycle)} ({steps})")
    return out


def _components(graph: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                yield sorted(component)


def _cycle(graph: Mapping[str, set[str]], component: Sequence[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    inside = set(component)
    first = component[0]
    parent: dict[str, str] = {}
    queue = [first]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == first:
                path = [v]
                while path[-1] != first:
                    path.append(parent[path[-1]])
                return [*reversed(path), first]
            if w in inside and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle in the component {component}")  # Tarjan says there is one


# --------------------------------------------------------------------------- the tests


def _found() -> list[Use]:
    return uses(scan(ROOT))


def test_private_names_stay_in_their_room() -> None:
    bad = private_uses(_found())
    assert not bad, ("private names taken from another module (make what is needed public "
                     "where it belongs):\n" + "\n".join(bad))


def test_only_the_cli_and_the_job_runner_import_the_workflow() -> None:
    bad = workflow_uses(_found())
    assert not bad, (f"only {sorted(MAY_IMPORT_WORKFLOW)} may import {WORKFLOW} (a stage never "
                     "imports the workflow; move what it needs down):\n" + "\n".join(bad))


def test_no_import_circles() -> None:
    found = circles(_found())
    assert not found, "import circles among our modules:\n" + "\n".join(found)


def test_the_checks_catch_each_mistake(tmp_path: Path) -> None:
    files = {
        "pipeline/__init__.py": "def __getattr__(name):\n    from pipeline.workflow import run\n",
        "pipeline/workflow.py": "from pipeline import load\n",
        "pipeline/cli.py": "import pipeline.workflow\n",
        "pipeline/load.py": ("def _close(w, c):\n    return ''\n\n"
                             "def f():\n    from pipeline.scoring import x\n"),
        "pipeline/scoring.py": ("from pipeline.load import _close\n"
                              "import pipeline.workflow as workflow\n"
                              "x = 1\n"),
        "pipeline/registry.py": ("from pipeline import artifacts\n\n"
                                 "def f(fs):\n    return artifacts._is_local(fs)\n\n"
                                 "def g(artifacts):\n    return artifacts._other\n"),
        "pipeline/artifacts.py": "def _is_local(fs):\n    return True\n",
        "pipeline/uses_kernels.py": "from kernels._jit import jit\n",
        "kernels/__init__.py": "from kernels import _jit\n",
        "kernels/_jit.py": "def jit(f):\n    return f\n",
        "kernels/drift.py": "from kernels._jit import jit\nimport kernels._jit as j\nj.jit\n",
        "cluster/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = uses(scan(tmp_path))

    assert private_uses(found) == [
        "pipeline/registry.py:4: pipeline.registry takes pipeline.artifacts._is_local",
        "pipeline/scoring.py:1: pipeline.scoring takes pipeline.load._close",
        "pipeline/uses_kernels.py:1: pipeline.uses_kernels takes the private module "
        "kernels._jit",
    ]
    assert workflow_uses(found) == ["pipeline/scoring.py:2: pipeline.scoring imports pipeline.workflow"]
    assert circles(found) == [
        "pipeline.load -> pipeline.scoring -> pipeline.load (pipeline/load.py:5 pipeline.load "
        "-> pipeline.scoring, pipeline/scoring.py:1 pipeline.scoring -> pipeline.load)"]


def test_public_names_are_not_shadowed_by_submodules() -> None:
    """``from pipeline import run, score`` gives the functions even after every submodule is
    imported: the import system binds a submodule as an attribute of its package, so a public
    function and a module of the same name cannot both live in ``pipeline``."""
    import importlib
    import subprocess
    import sys

    modules = sorted(m for m in scan(ROOT, ("pipeline",)) if m != "pipeline")
    public = importlib.import_module("pipeline").__all__
    assert not set(public) & {m.rsplit(".", 1)[-1] for m in modules}
    code = ("import importlib\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "from pipeline import load_job, load_model, run, score\n"
            "assert all(callable(f) and not hasattr(f, '__path__') and type(f).__name__ == 'function'"
            " for f in (load_job, load_model, run, score)), (run, score)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
