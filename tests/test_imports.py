"""The package's modules import each other without a cycle.

The graph is read from the source with `ast`, so it counts every import: at the top of a module, inside a
function (a cycle hidden in a function is still a cycle), absolute and relative (`from . import x`).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "testbed"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The names an import statement may load: `x.y` for `import x.y`; for `from m import n`, `m.n` (when n is a
    submodule) and `m` itself; relative forms resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it names in an import.

    `from m import n` is an edge to the submodule m.n when there is one, else to m (a name defined in m or in
    its __init__). That importing m.n also runs m's __init__ is Python's mechanics, not a dependency of the
    importer: not an edge (else every package whose __init__ gathers its submodules would count as a cycle).
    A submodule that imports a name from its own package's __init__ is an edge, and a cycle when that
    __init__ imports the submodule."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = imported(node, module, path.name == "__init__.py")
                if isinstance(node, ast.ImportFrom):
                    submodules = [name for name in names[1:] if name in paths]
                    names = submodules if len(submodules) == len(node.names) else [names[0], *submodules]
                edges.update(name for name in names if name in paths)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules, the first repeated at the end), or None; depth-first search."""
    state: dict[str, str] = {}  # module -> "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    function_level = ast.parse("def f():\n    from testbed.x import y\n").body[0].body[0]
    assert imported(function_level, "testbed.m", False) == ["testbed.x", "testbed.x.y"]
    relative = ast.parse("from . import sibling\n").body[0]
    assert imported(relative, "testbed.pkg.m", False) == ["testbed.pkg", "testbed.pkg.sibling"]
    assert imported(relative, "testbed.pkg", True) == ["testbed.pkg", "testbed.pkg.sibling"]
    parent = ast.parse("from ..other import thing\n").body[0]
    assert imported(parent, "testbed.pkg.m", False) == ["testbed.other", "testbed.other.thing"]


def test_no_import_cycle_between_the_package_modules():
    graph = import_graph()
    assert "testbed.launch.run" in graph and "testbed.launch.processes" in graph["testbed.launch.run"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_monitor_does_not_import_the_launcher():
    """The launcher shows a run through the monitor (lines or dashboard); the monitor needs nothing of it."""
    graph = import_graph()
    back = sorted(f"{module} -> {target}" for module, targets in graph.items() if module.startswith("testbed.monitor")
                  for target in targets if target.startswith("testbed.launch"))
    assert not back, back


def ray_imports() -> dict[str, list[int]]:
    """Module -> the lines where it imports Ray (`import ray...` or `from ray... import`), anywhere in it."""
    found: dict[str, list[int]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name == "ray" or name.startswith("ray.") for name in names):
                found.setdefault(module_name(path), []).append(node.lineno)
    return found


def test_ray_is_imported_only_by_the_cluster_modules_and_never_at_their_top():
    """Ray is optional: only `testbed run --cluster` may load it (inside the functions that need it)."""
    found = ray_imports()
    assert set(found) <= {"testbed.launch.cluster", "testbed.launch.cluster_host"}, found
    for module in found:
        tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
        top = [node.lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert not set(top) & set(found[module]), f"{module} imports ray at its top (lines {found[module]})"


def test_testbed_run_without_cluster_does_not_import_ray():
    """What `testbed run SCENARIO` loads in the launcher (its command, the run, the options) leaves Ray out."""
    import subprocess
    import sys

    code = ("import sys, argparse\n"
            "from testbed.launch import commands, run, cluster, cluster_host\n"
            "parser = argparse.ArgumentParser(); commands.add_run_args(parser)\n"
            "assert commands.cluster_options(parser.parse_args(['s.yaml'])) is None\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
