"""The code's shape as the design promises it: llava/ stands alone, dualspeed_patch/ has no import cycle, files
stay short."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_files(folder: str):
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path, package: str) -> set:
    """Every module `path` imports, at any depth of the file (function-level imports count too), resolved to
    absolute names; relative imports are resolved against `package`, the package the file belongs to."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_llava_does_not_import_or_name_dualspeed():
    offenders = []
    for path in python_files("llava"):
        text = path.read_text()
        modules = imported_modules(path, module_name(path))
        if any(m.split(".")[0] == "dualspeed_patch" for m in modules):
            offenders.append(f"{path.relative_to(REPO)}: imports dualspeed_patch")
        for word in ("dualspeed", "mode_isolator"):
            if word in text.lower():
                offenders.append(f"{path.relative_to(REPO)}: names {word!r}")
    assert offenders == []


def test_dualspeed_patch_has_no_import_cycle():
    """Module-level and function-level imports alike: a cycle hidden inside a function is still a cycle."""
    paths = {module_name(p): p for p in python_files("dualspeed_patch")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = {m for m in imported_modules(path, package) if m in paths and m != name}
        # importing a submodule runs its package's __init__ first; the package itself is not a dependency edge here
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def find_cycle(graph: dict):
    """One cycle of `graph` as a list of nodes (first repeated at the end), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_hidden_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_file_over_400_lines_outside_tests():
    long = []
    for folder in ("llava", "dualspeed_patch", "playground", "bench", "scripts"):
        for path in python_files(folder):
            n = len(path.read_text().splitlines())
            if n > 400:
                long.append(f"{path.relative_to(REPO)}: {n}")
    assert long == []
