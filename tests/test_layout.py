"""The package's layout: no import circle between transferkit's modules (function-local imports included), and
no module importing another's private name, no function of more than ten parameters."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "transferkit"


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The transferkit modules `name` imports anywhere in its body, and the private names it imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges, private = set(), []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            if not target.startswith("transferkit"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                edges.add(full if full in known else target)
                if alias.name.startswith("_") and not alias.name.startswith("__") and full not in known:
                    private.append(f"{name} imports {full}")
        elif isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in known}
    return edges - {name}, private


TESTS = SRC.parents[1] / "tests"


def test_tests_import_no_private_names():
    """Tests use what the modules offer (a private helper a test needs is public, with a docstring)."""
    known, private = modules(), []
    for path in sorted(TESTS.rglob("*.py")):
        private += imports(f"tests.{path.stem}", path, known)[1]
    assert not private, private


def test_no_import_circles_and_no_private_imports():
    known = modules()
    graph, private = {}, []
    for name, path in known.items():
        graph[name], found = imports(name, path, known)
        private += found
    assert not private, private
    # Depth-first search for a back edge (an import that leads back to a module on the current path).
    state, circles = {}, []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


MAX_PARAMETERS = 10  # more, and a function wants its options grouped in a dataclass (RunOptions, FitPlan, ...)


def test_no_function_takes_more_than_ten_parameters():
    crowded = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    crowded.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} takes {count}")
    assert not crowded, crowded
