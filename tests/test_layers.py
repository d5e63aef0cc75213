"""The packages' layers, read statically from the source (`ast`, imports inside functions included):
no import loop among `dbae_platform` modules, no library module importing the command line (`dbae_platform.cli`),
and `dbae_core` free of Ray, MLflow, Optuna and YAML. The README's layout block names every module and no module
that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna", "yaml")


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of `package` (a package is its __init__)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, anywhere in the file: `import a.b` gives a.b, `from a import b` gives a
    and a.b (b may be a module), relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (names that are not modules map to the module holding them)."""
    modules = _modules(package)
    graph = {}
    for module, path in modules.items():
        targets = {name for name in _imported(module, path) if name in modules}
        graph[module] = {t for t in targets if t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
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
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(graph, component) for component in components]


def _path_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest loop through the alphabetically first module of `component`."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    return sorted(component)


def test_no_import_loop_in_dbae_platform():
    loops = _cycles(_graph("dbae_platform"))
    assert not loops, "import loops in dbae_platform:\n" + "\n".join(" -> ".join(loop) for loop in loops)


def test_library_modules_do_not_import_the_command_line():
    bad = sorted(f"{module} imports {name}"
                 for module, path in _modules("dbae_platform").items()
                 if module != "dbae_platform.cli" and not module.startswith("dbae_platform.cli.")
                 for name in _imported(module, path)
                 if name == "dbae_platform.cli" or name.startswith("dbae_platform.cli."))
    assert not bad, "library modules import the command line:\n" + "\n".join(bad)


def test_dbae_core_imports_no_orchestration_library():
    bad = sorted(f"{module} imports {name}"
                 for module, path in _modules("dbae_core").items()
                 for name in _imported(module, path)
                 if name.split(".")[0] in FORBIDDEN_IN_CORE)
    assert not bad, "dbae_core imports Ray, MLflow, Optuna or YAML:\n" + "\n".join(bad)


def test_the_walk_sees_imports_inside_functions():
    graph = _graph("dbae_platform")
    assert graph and all(isinstance(v, set) for v in graph.values())
    assert any(graph.values()), "no imports found: the walk is broken"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def _layout() -> str:
    """The README's layout block: the code block under `## Layout`."""
    text = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1]
    return text.split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_only_modules_that_exist():
    layout = _layout()
    words = set(re.findall(r"[\w./]+?\.py\b|\w+/", layout))  # file names and folders
    for package in ("dbae_core", "dbae_platform"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py") or path.parent.name == "__pycache__":
                continue
            rel = path.relative_to(ROOT / package)
            # a module is named by its file name, or by its folder (dbae_core's networks/, metrics/, data/)
            assert path.name in words or f"{rel.parts[0]}/" in words or str(rel) in words, \
                f"README layout does not mention {package}/{rel}"
    section = layout.split("dbae_platform/", 1)[1].split("\nsweeps/", 1)[0]
    for line in section.splitlines()[1:]:
        name = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else ""
        if name:
            assert (ROOT / "dbae_platform" / name.rstrip(",")).exists(), f"README layout names {name}, not in the tree"
