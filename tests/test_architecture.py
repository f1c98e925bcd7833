"""The package's shape: no import circles, no stage importing another stage, imports at module top."""

from __future__ import annotations

import ast
from pathlib import Path

from youri.cli import COMMANDS

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "youri"
# Imported inside functions on purpose: optional dependencies that youri does not install.
OPTIONAL = (
    "peft",
    "vllm",
    "lm_eval.models.vllm_causallms",
    "lm_eval.models.openai_completions",  # needs lm-eval[api] (tenacity): youri eval --server only
    "torch.utils.tensorboard",
    "gptqmodel",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p for p in PACKAGE.rglob("*.py") if "lm_eval_tasks" not in p.parts and "sample" not in p.parts
}


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    """Every (import node, imported module) in a tree; ``from pkg import mod`` names the submodule."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            found += [(node, sub) for sub in subs] or [(node, node.module)]
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = {mod for _, mod in _imports(ast.parse(path.read_text(encoding="utf-8"))) if mod in MODULES}
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_circle():
    graph = _graph()
    assert len(graph) > 30 and graph["youri.train.pretrain"], "the walk found the package's modules and imports"
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_stage_imports_another_stage():
    stages = {c.module for c in COMMANDS}
    assert stages <= set(MODULES), "every registered stage module exists"
    graph = _graph()
    offenders = {stage: sorted(graph[stage] & (stages - {stage})) for stage in stages}
    assert not {k: v for k, v in offenders.items() if v}, f"stage -> stage imports: {offenders}"


def test_imports_are_at_module_top():
    late = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node, module in _imports(tree):
            if id(node) not in top and not module.startswith(OPTIONAL):
                late.append(f"{name}:{node.lineno} imports {module}")
    assert not late, "imports inside functions (move them to the top, or list an optional dependency):\n" + "\n".join(
        late
    )


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init} needs a docstring naming its modules"
        for module in init.parent.glob("*.py"):
            if module.name != "__init__.py":
                assert f"``{module.stem}``" in doc, f"{init}: docstring does not mention ``{module.stem}``"


SPINE = ("youri.cli", "youri.config", "youri.io", "youri.stage", "youri.model", "youri.prompts", "youri.families")
WINGS = ("youri.data", "youri.train", "youri.quant", "youri.eval", "youri.serve", "youri.run")


def test_the_spine_never_imports_a_wing():
    """Loading a model (``youri.model``, the GPTQ runtime under it) or a family's facts never climbs into a stage
    folder; ``youri.cli`` reaches the stages only by module name, through its registry."""
    graph = _graph()
    below = [m for m in MODULES if m in SPINE or m.startswith("youri.runtime")]
    assert "youri.runtime.quant_linear" in below and "youri.model" in below
    offenders = {m: sorted(d for d in graph[m] if d.split(".")[:2] in [w.split(".") for w in WINGS]) for m in below}
    assert not {k: v for k, v in offenders.items() if v}, f"spine -> wing imports: {offenders}"
