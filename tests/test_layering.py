"""The shape holds: every module imports only its own floor or the floors below it, and no import circle exists.

Read from the source with ``ast`` (nothing is imported), counting every import: module level, inside
functions and under ``TYPE_CHECKING`` alike, so a circle cannot hide behind a late import.

Floors, bottom to top: ``core`` < ``data_prep`` < ``models`` < ``orchestration``. Inside ``models`` and
``orchestration`` the rooms are floors too (:data:`ROOMS`, bottom first); a module directly in a
package (its ``__init__``) belongs to the package's lowest room.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "data_prep", "models", "orchestration")
ROOMS = {
    "models": ("nets", "train", "pretrain"),
    "orchestration": ("tracking", "cluster", "pretrain", "study", "report", "sweep", "cli"),
}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    name = "recon." + ".".join(parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def modules(root: Path) -> dict[str, Path]:
    return {module_name(root, p): p for layer in LAYERS if (root / layer).is_dir()
            for p in sorted((root / layer).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """``(imported recon module, line)`` for every import in the file (any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.append((full if full in known else target, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
    return [(t, line) for t, line in out if t in known and t != name]


def rank(name: str) -> tuple[int, int]:
    """(floor, room) of a recon module."""
    parts = name.split(".")
    layer = LAYERS.index(parts[1])
    rooms = ROOMS.get(parts[1])
    if not rooms:
        return layer, 0
    room = parts[2] if len(parts) > 2 and parts[2] in rooms else rooms[0]
    return layer, rooms.index(room)


def upward_imports(root: Path) -> list[str]:
    mods = modules(root)
    problems = []
    for name, path in mods.items():
        for target, line in imports_of(name, path, set(mods)):
            if rank(target) > rank(name):
                problems.append(f"{path.relative_to(root)}:{line}: {name} imports {target}, a floor above it")
    return problems


def import_circles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    mods = modules(root)
    graph = {name: {t for t, _ in imports_of(name, path, set(mods))} for name, path in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_module_imports_a_floor_above_its_own():
    problems = upward_imports(ROOT)
    assert not problems, "\n".join(problems)


def test_no_import_circle():
    circles = import_circles(ROOT)
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_every_room_is_a_known_floor():
    """A new folder in models/ or orchestration/ must be given its place in ROOMS (so the order is decided)."""
    for layer, rooms in ROOMS.items():
        found = {p.name for p in (ROOT / layer).iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
        assert found == set(rooms), f"{layer}/: rooms on disk {sorted(found)}, ordered in ROOMS {list(rooms)}"


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("importer,line", [
    ("core/a.py", "from recon.models.nets.b import X\n"),           # floor above
    ("models/nets/a.py", "def f():\n    from recon.models.train.b import X\n"),  # room above, inside a function
    ("orchestration/tracking/a.py", "import recon.orchestration.study.b\n"),
])
def test_the_checker_finds_a_planted_upward_import(tmp_path, importer, line):
    tree = {"core/__init__.py": "", "core/b.py": "", "models/__init__.py": "",
            "models/nets/__init__.py": "", "models/nets/b.py": "", "models/train/__init__.py": "",
            "models/train/b.py": "", "orchestration/__init__.py": "", "orchestration/tracking/__init__.py": "",
            "orchestration/study/__init__.py": "", "orchestration/study/b.py": ""}
    root = _plant(tmp_path, {**tree, importer: line})
    assert len(upward_imports(root)) == 1


def test_the_checker_finds_a_planted_circle(tmp_path):
    root = _plant(tmp_path, {"core/__init__.py": "", "core/a.py": "from recon.core.b import X\n",
                             "core/b.py": "def f():\n    from recon.core import a\n"})
    assert import_circles(root) == [["recon.core.a", "recon.core.b"]]
