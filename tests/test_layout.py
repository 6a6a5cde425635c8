"""The shape ../shared/DESIGN.md draws, held: no module pair imports each other, the doctor uses the features
and the build layer (never the pipeline or the search), inference never imports training, nothing imports the
command line, and only the tasks branch on what a label is."""

from __future__ import annotations

import ast
import re
from importlib.metadata import version
from pathlib import Path

import imgclf

SOURCE = Path(imgclf.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SOURCE.rglob("*.py")}


class _Imports(ast.NodeVisitor):
    """The modules a module imports when it runs (at its top or inside functions; not under TYPE_CHECKING)."""

    def __init__(self, name: str, package: bool) -> None:
        self.name, self.package, self.found = name, package, set()

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.name.split(".") if self.package else self.name.split(".")[:-1]
        target = (
            ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            if node.level
            else node.module or ""
        )
        for alias in node.names:
            full = f"{target}.{alias.name}"
            self.found.add(full if full in MODULES else target)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)


def imports() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text()))
        graph[name] = {m for m in visitor.found if m in MODULES and m != name}
    return graph


def test_no_module_pair_imports_each_other():
    graph = imports()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph[b]})
    assert pairs == []


def test_arrows_run_one_way():
    graph = imports()
    # nothing imports the command line (but `python -m imgclf`, which is it)
    assert [m for m, deps in graph.items() if "imgclf.cli" in deps] == ["imgclf.__main__"]
    doctor = {m: deps for m, deps in graph.items() if m.startswith("imgclf.doctor")}
    assert not [m for m, deps in doctor.items() if deps & {"imgclf.train.pipeline", "imgclf.train.search"}]
    for inference in ("imgclf.predict", "imgclf.export", "imgclf.serve.app", "imgclf.rundir", "imgclf.tasks.base"):
        assert not [m for m in graph[inference] if m.startswith("imgclf.train")], inference
    # the studio's process runs training in children: nothing it imports, however deep, is training's
    studio = [m for m in graph if m.startswith("imgclf.studio")]
    reached, todo = set(studio), list(studio)
    while todo:
        for dep in graph[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert studio and not [m for m in reached if m.startswith("imgclf.train")]
    # the build layer knows nothing of the search or the pipeline that uses it
    assert not graph["imgclf.train.build"] & {"imgclf.train.search", "imgclf.train.pipeline", "imgclf.train.finish"}


# what asks "what is a label?" outside the tasks: the parsing of a CSV's labels and one guard per command that is
# single-label by nature, each through the task (its refusal); nothing tests the task's name or the labels' shape
TASK_BRANCH = re.compile(r"multi_label|task\.name\s*[!=]=|\.dim\(\) == 2|\.get\(\"task\"\)")
PARSING = {
    "data/folder.py": 2,  # a CSV's 0/1 label rows become floats; a source's parsed labels name their task
    "rundir.py": 3,  # stored files of older versions: the task each was written for (and the format's docstring)
}


def test_only_the_tasks_branch_on_the_task():
    found = {}
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        if relative.startswith("tasks/"):
            continue
        code = [line.split("#")[0] for line in path.read_text().splitlines()]
        hits = [line for line in code if TASK_BRANCH.search(line)]
        if hits:
            found[relative] = len(hits)
    assert {k: v for k, v in found.items() if v > PARSING.get(k, 0)} == {}


def test_the_version_is_the_packages_own():
    assert imgclf.__version__ == version("imgclf")


def test_every_module_imports_first(tmp_path):
    """Each module can be the first of imgclf's to be imported (a cycle through a package's eager imports would
    break some order): each is imported in a fresh interpreter's module table, torch and the rest kept."""
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib, sys\n"
        "import torch, torchvision, numpy, PIL  # kept: only imgclf's own modules are imported afresh\n"
        "failed = []\n"
        f"for name in {sorted(m for m in MODULES if m != 'imgclf.__main__')!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'imgclf' or m.startswith('imgclf.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print(failed)\n"
    )
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
