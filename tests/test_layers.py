"""Imports point one way: every module's imports, read with ``ast``, against the layer order.

Layers, lowest first (``fedspeech/__init__.py`` says what each holds)::

    base < math < core < speech < records < roles < transports < tools

The design card's top-level files belong to a layer too: ``brain.py``, ``weights.py`` and
``common_voice_prepare.py`` to speech, ``strategy.py`` to transports, ``server.py``,
``client.py`` and ``scripts/*.py`` to tools (the programs). A module may import its own layer and
the layers below, never above; no two modules may import each other, however indirectly; and the
lower layers may not know the heavy libraries (the round core neither SpeechBrain nor Flower).
Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = ("base", "math", "core", "speech", "records", "roles", "transports", "tools")
TOP_LEVEL = {"brain": "speech", "weights": "speech", "common_voice_prepare": "speech",
             "strategy": "transports", "server": "tools", "client": "tools"}
HEAVY = {"numpy", "torch", "torchaudio", "speechbrain", "hyperpyyaml", "ruamel",
         "sentencepiece", "soundfile", "matplotlib", "flwr", "grpc", "ray"}
FORBIDDEN = {  # third-party packages a layer must not import
    "base": HEAVY,
    "math": HEAVY - {"numpy"},
    "core": HEAVY - {"numpy"},
    "speech": {"flwr", "grpc", "ray"},
    "records": {"flwr", "grpc", "ray"},
    "roles": {"flwr", "grpc", "ray"},
}
# Flower's pure-math modules the math layer reuses: its robust aggregation rules (numpy) and its
# privacy accountant. Nothing else of Flower is below the transports.
ALLOWED = {"math": {"flwr.server.strategy.aggregate", "flwr.supercore.privacy_accounting",
                    "flwr.supercore.privacy_accounting.rdp_accountant"}}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for the package, the top-level files and the scripts."""
    modules = {p.stem: p for p in root.glob("*.py") if p.stem in TOP_LEVEL}
    for path in (root / "fedspeech").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    for path in (root / "scripts").glob("*.py"):
        modules[f"scripts.{path.stem}"] = path
    return modules


def layer_of(module: str) -> str | None:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    if module.startswith("scripts."):
        return "tools"
    parts = module.split(".")
    if parts[0] == "fedspeech" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return None  # fedspeech/__init__.py: the package's docstring, no layer


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (``from a import b`` gives both
    ``a`` and ``a.b``: b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def library_imports(path: Path, allowed: set[str]) -> set[str]:
    """What a file takes from other packages, less what ``allowed`` names: a module, or a name
    imported from one (``from a.b import c`` is ``a.b.c`` if ``a.b.c`` is allowed, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in allowed else node.module)
    return {t for t in found if t not in allowed}


def violations(root: Path) -> list[str]:
    """Every import against the layer order, every heavy import where it must not be, and
    every cycle, as one line each."""
    modules = project_modules(root)
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, path in sorted(modules.items()):
        layer = layer_of(name)
        targets = imports_of(path)
        graph[name] = {t for t in targets if t in modules and t != name}
        for target in sorted(graph[name]):
            target_layer = layer_of(target)
            if layer and target_layer and LAYERS.index(target_layer) > LAYERS.index(layer):
                problems.append(f"{name} ({layer}) imports {target} ({target_layer})")
        for target in sorted(library_imports(path, ALLOWED.get(layer, set()))):
            if layer and target.split(".")[0] in FORBIDDEN.get(layer, ()):
                problems.append(f"{name} ({layer}) imports {target.split('.')[0]}")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_project_imports_point_one_way():
    assert violations(ROOT) == []


def test_every_module_has_a_layer():
    unplaced = [m for m in project_modules(ROOT) if m != "fedspeech" and layer_of(m) is None]
    assert unplaced == []


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({"fedspeech/core/round.py": "from fedspeech.roles import server_model\n",
      "fedspeech/roles/server_model.py": ""},
     "fedspeech.core.round (core) imports fedspeech.roles.server_model (roles)"),
    ({"fedspeech/core/round.py": "def f():\n    import speechbrain\n"},
     "fedspeech.core.round (core) imports speechbrain"),
    ({"fedspeech/math/aggregate.py": "from flwr.server import start_server\n"},
     "fedspeech.math.aggregate (math) imports flwr"),
    ({"weights.py": "import fedspeech.transports.app_arrays\n",
      "fedspeech/transports/app_arrays.py": ""},
     "weights (speech) imports fedspeech.transports.app_arrays (transports)"),
    ({"fedspeech/speech/a.py": "from fedspeech.speech import b\n",
      "fedspeech/speech/b.py": "from fedspeech.speech import a\n"},
     "import cycle: fedspeech.speech.a -> fedspeech.speech.b -> fedspeech.speech.a"),
])
def test_a_forbidden_import_is_caught(tmp_path: Path, files: dict[str, str], expected: str):
    assert expected in violations(make_tree(tmp_path, files))
