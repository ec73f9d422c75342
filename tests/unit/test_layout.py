"""The package layout holds: no import circles, light modules stay light, every
package says what lives in it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "lib"
PACKAGE = LIB / "amazon_recs"


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every amazon_recs module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from pkg import mod" imports pkg.mod when that is a module, else pkg.
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported(path, known) - {name} for name, path in modules().items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    cycles = []

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [], set(), done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_the_imports_it_checks():
    # A checker that saw no edges would pass the test above for nothing.
    graph = import_graph()
    assert "amazon_recs.pipeline.registry" in graph["amazon_recs.cli"]
    assert "amazon_recs.serving.dynamodb" in graph["amazon_recs.serving.writer"]
    assert "amazon_recs.models.training" in graph["amazon_recs.models.tuning"]


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("amazon_recs.serving", {"amazon_recs.pipeline", "amazon_recs.aws"}),
        ("amazon_recs.aws", {"amazon_recs.pipeline.train", "amazon_recs.serving"}),
        ("amazon_recs.models", {"amazon_recs.pipeline", "amazon_recs.serving", "amazon_recs.aws"}),
        ("amazon_recs.ingest", {"amazon_recs.pipeline", "amazon_recs.models", "amazon_recs.serving"}),
        ("amazon_recs.features", {"amazon_recs.pipeline", "amazon_recs.models", "amazon_recs.serving"}),
        ("amazon_recs.evaluation", {"amazon_recs.pipeline", "amazon_recs.serving", "amazon_recs.aws"}),
    ],
)
def test_packages_import_only_what_their_init_allows(package, forbidden):
    graph = import_graph()
    wrong = sorted(
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name == package or name.startswith(package + ".")
        for dep in deps
        if any(dep == f or dep.startswith(f + ".") for f in forbidden)
    )
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(n for n, p in modules().items() if p.name == "__init__.py"))
def test_every_package_says_what_lives_in_it(name):
    doc = ast.get_docstring(ast.parse(modules()[name].read_text(encoding="utf-8")))
    assert doc and len(doc.splitlines()) >= 2, (
        f"{name}: a two-line docstring (what lives here, what it may import)"
    )


@pytest.mark.parametrize(
    "code",
    [
        "import amazon_recs.pipeline.registry",
        "import amazon_recs.aws.commands, amazon_recs.aws.emr, amazon_recs.aws.artifacts",
        "import amazon_recs.aws.iam, amazon_recs.aws.athena",
        "import amazon_recs.serving.api, amazon_recs.serving.stores, amazon_recs.serving.gold_tables",
        "from amazon_recs import cli; cli.build_parser().parse_args(['emr', 'package'])",
    ],
)
def test_light_modules_never_import_pyspark(code):
    probe = f"{code}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{code!r} imported {out.strip()}"
