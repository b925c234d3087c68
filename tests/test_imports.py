"""The modules of lib/intasr import each other without a cycle, lazy (in-function) imports included.

A cycle hidden behind a function-level import still means two modules each need the other to be
understood; the integer program's backends depend on the program, never the other way round.
"""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "intasr"


def _module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from .x import y`: y may be a submodule of x
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_graph_sees_lazy_imports():
    g = import_graph()
    assert "intasr.program.ops" in g["intasr.program.torch_ref"]
    assert "intasr.program.torch_ref" in g["intasr.integer_model"]  # imported inside forward_int


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_lib():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


# The floors of the house (README, "Layout"): a module imports only from its own floor or below.
# Each entry is a module or a package (relative to intasr); the longest match decides, so a
# recipe inside quant/ sits above the primitives beside it. A new module must be given a floor here.
FLOORS = {
    0: ("base", ["version", "paths", "cpu", "provenance", "text", "tokenizer", "options"]),
    1: ("I/O", ["audio", "data"]),
    2: ("models and checkpoints", ["models"]),
    3: ("quantization primitives and integer kernels", ["quant", "intops"]),
    4: ("the integer program: op set, checks, backends", ["program"]),
    5: ("calibration, synthesis and conversion", ["calibration", "synth", "convert", "convert_conformer", "integer_model",
                                                 "simulate"]),
    6: ("recipes", ["quantize", "quant.adaround", "quant.mixed_precision", "conformer_weights"]),
    7: ("experiments, results and deployment", ["experiments", "evaluate", "gridrun", "tables", "verify", "deploy",
                                               "fuzz", "aggregate", "paper", "chapter_source", "book_tables",
                                               "ablations", "plots", "results_file", "recipe_runs", "selection",
                                               "size_sweep", "conformer_report", "grid_report", "convasr_probes", "integer_checks",
                                               "intro_figures"]),
    8: ("api and command line", ["api", "cli", "fuzz.__main__", ""]),
}


def floor_of(module: str) -> int | None:
    rel = module[len("intasr."):] if module.startswith("intasr.") else ""
    best, best_len = None, -1
    for floor, (_, names) in FLOORS.items():
        for name in names:
            if (rel == name or (name and rel.startswith(name + "."))) and len(name) > best_len:
                best, best_len = floor, len(name)
    return best


def test_every_module_has_a_floor():
    missing = sorted(m for m in import_graph() if floor_of(m) is None)
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_floor_rules():
    assert floor_of("intasr.quant.quantizer") == 3 and floor_of("intasr.quant.adaround") == 6
    assert floor_of("intasr") == 8 and floor_of("intasr.program.c_backend") == 4
    assert floor_of("intasr.fuzz.__main__") == 8 and floor_of("intasr.fuzz.readers") == 7


def test_no_import_points_up_the_floors():
    up = [f"{m} (floor {floor_of(m)}) -> {d} (floor {floor_of(d)})"
          for m, deps in sorted(import_graph().items()) for d in sorted(deps)
          if floor_of(m) is not None and floor_of(d) is not None and floor_of(d) > floor_of(m)]
    assert not up, "imports pointing up the floors:\n" + "\n".join(up)


def _reaches_into_convasr_blocks(source: str) -> list[int]:
    """Lines that read `<x>.encoder.encoder` (the ConvASR block list) as an attribute."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Attribute) and n.attr == "encoder"
            and isinstance(n.value, ast.Attribute) and n.value.attr == "encoder"]


def test_block_reader_finds_a_reach():
    assert _reaches_into_convasr_blocks("for b in model.encoder.encoder:\n    pass\n") == [1]
    assert _reaches_into_convasr_blocks("name = f'encoder.encoder.{b}'\n") == []


def test_only_the_walk_reads_the_convasr_blocks():
    """The ConvASR's block structure is read in one place (models.convasr: the model itself and
    its `walk`); everything else visits the walk."""
    lib = Path(__file__).resolve().parents[1] / "lib" / "intasr"
    found = {str(p.relative_to(lib)): lines for p in lib.rglob("*.py")
             if p.name != "convasr.py" and (lines := _reaches_into_convasr_blocks(p.read_text()))}
    assert not found, f"modules that walk model.encoder.encoder by hand (use models.convasr.walk): {found}"


def _private_imports(source: str) -> list[tuple[int, str]]:
    """(line, name) of every underscore name imported from another module of the package."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == LIB.name):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_private_import_finder_finds_one():
    assert _private_imports("from .ops import OPS, _hidden\nfrom __future__ import annotations\n") == [(1, "_hidden")]


def test_no_module_imports_another_modules_private_names():
    """Everything used across modules is public: lib/, tools/ and benchmarks/ import no `_name`."""
    root = LIB.parents[1]
    files = [*LIB.rglob("*.py"), *(root / "tools").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]
    found = {str(p.relative_to(root)): hits for p in files if (hits := _private_imports(p.read_text()))}
    assert not found, f"private names imported across modules: {found}"
