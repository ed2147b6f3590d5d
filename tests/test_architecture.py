"""The layout's promises, checked from the source: which room may import which, and size limits.

Rooms ("areas") are the folders mapped into the ``lowdose`` package (pyproject's
``package-dir``) and their first-level subfolders. ``lowdose/__init__.py`` (the version) is
ground: every room may use it. See README "Where the code lives" and docs/design.md.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GROUND = "lowdose"
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 3


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. lowdose.daemon.server
    path: Path
    is_package: bool
    tree: ast.Module


def _package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: REPO / folder for pkg, folder in cfg["package-dir"].items()}


def _modules() -> list[Module]:
    mapped = _package_dirs()
    # a folder mapped to its own package is not also a subfolder of another mapped package
    owned = {path.resolve() for path in mapped.values()}
    out = []
    for pkg, folder in mapped.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any((folder / Path(*rel.parts[:i])).resolve() in owned for i in range(1, len(rel.parts))):
                continue
            parts = [*pkg.split("."), *rel.with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            out.append(Module(".".join(parts), path, is_package, ast.parse(path.read_text(), str(path))))
    return out


def _imports(mod: Module) -> set[str]:
    """Every lowdose module ``mod`` imports, at any depth (lazy imports inside functions count)."""
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import submodule` imports the submodule
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == GROUND or name.startswith(GROUND + ".")}


def _area(name: str, known: set[str]) -> str:
    """``lowdose.daemon.store.chunks`` -> ``lowdose.daemon.store``; ``lowdose.cli`` -> ``lowdose``."""
    parts = name.split(".")
    for depth in (3, 2):
        candidate = ".".join(parts[:depth])
        if len(parts) >= depth and candidate in known:
            return candidate
    return GROUND


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return _modules()


@pytest.fixture(scope="module")
def arrows(modules: list[Module]) -> dict[tuple[str, str], list[str]]:
    """(importing area, imported area) -> the module imports that draw that arrow."""
    packages = {m.name for m in modules if m.is_package}
    names = {m.name for m in modules}
    areas = {p for p in packages if p.count(".") in (1, 2)}
    out: dict[tuple[str, str], list[str]] = {}
    for mod in modules:
        src = _area(mod.name, areas)
        for target in _imports(mod):
            if target == GROUND or target == f"{GROUND}.__init__":
                continue  # ground: __version__
            while target not in names and "." in target:
                target = target.rpartition(".")[0]  # `from lowdose.x import name`: the module is lowdose.x
            dst = _area(target, areas)
            if src != dst and target != GROUND:
                out.setdefault((src, dst), []).append(f"{mod.name} -> {target}")
    return out


def test_the_layout_is_read(modules: list[Module], arrows) -> None:
    names = {m.name for m in modules}
    assert {"lowdose.wire.protocol", "lowdose.daemon.server", "lowdose.plugins.acquisition.sender",
            "lowdose.plugins.denoisers.interface", "lowdose.models.unet"} <= names
    assert ("lowdose.daemon", "lowdose.wire") in arrows  # the check sees real arrows


def test_no_two_areas_import_each_other(arrows) -> None:
    both_ways = sorted(
        f"{a} <-> {b}: {arrows[(a, b)][:2]} / {arrows[(b, a)][:2]}" for (a, b) in arrows if (b, a) in arrows and a < b
    )
    assert not both_ways, "areas that import each other:\n" + "\n".join(both_ways)


def test_no_cycle_between_areas(arrows) -> None:
    graph: dict[str, set[str]] = {}
    for a, b in arrows:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, f"areas in a cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("neutral", ["lowdose.wire", "lowdose.plugins.denoisers.interface"])
def test_shared_modules_import_nothing_of_lowdose(modules: list[Module], neutral: str) -> None:
    """Both ends of the wire, and every model, depend on these; they depend on nothing of ours."""
    offenders = []
    for mod in modules:
        if mod.name == neutral or mod.name.startswith(neutral + "."):
            outside = {t for t in _imports(mod) if t != GROUND and not t.startswith(neutral)}
            offenders += [f"{mod.name} -> {t}" for t in sorted(outside)]
    assert not offenders, offenders


def test_acquisition_client_never_imports_the_daemon(modules: list[Module]) -> None:
    """A microscope PC runs the hooks without the daemon's store, scheduler or models' torch code."""
    offenders = [
        f"{mod.name} -> {t}"
        for mod in modules
        if mod.name.startswith("lowdose.plugins.acquisition")
        for t in _imports(mod)
        if t.startswith("lowdose.daemon")
    ]
    assert not offenders, offenders


# What a Windows Micro-Manager PC lacks. Names used behind an ``os.name``/``getattr`` check are fine
# as strings; a plain attribute access or import is what breaks there.
POSIX_ONLY_MODULES = {"fcntl", "termios", "pwd", "grp", "resource", "posix", "tty", "pty"}
POSIX_ONLY_ATTRS = {
    "os": {"fork", "forkpty", "getuid", "geteuid", "getgid", "setsid", "killpg", "chown", "O_DIRECTORY",
           "O_NOFOLLOW", "O_DIRECT", "sync", "statvfs", "mkfifo"},
    "signal": {"SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGQUIT", "alarm", "pause"},
}
ACQUISITION_SIDE = ("lowdose.plugins.acquisition", "lowdose.wire", "lowdose.acquire", "lowdose.client")


def test_acquisition_side_uses_nothing_posix_only(modules: list[Module]) -> None:
    """Hooks, sender and spool run on the microscope PC, most often Windows."""
    offenders = []
    for mod in modules:
        if not mod.name.startswith(ACQUISITION_SIDE):
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [(node.module or "").split(".")[0]]
                names += [f"{names[0]}.{a.name}" for a in node.names if a.name in POSIX_ONLY_ATTRS.get(names[0], ())]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                names = [f"{node.value.id}.{node.attr}"] if node.attr in POSIX_ONLY_ATTRS.get(node.value.id, ()) else []
            else:
                continue
            offenders += [f"{mod.name}:{node.lineno} {n}" for n in names if n in POSIX_ONLY_MODULES or "." in n]
    assert not offenders, offenders


def _defs(modules: list[Module]):
    for mod in modules:
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield mod, node, node.end_lineno - node.lineno + 1


def test_no_class_over_400_lines(modules: list[Module]) -> None:
    big = [f"{m.name}.{n.name}: {size}" for m, n, size in _defs(modules)
           if isinstance(n, ast.ClassDef) and size > MAX_CLASS_LINES]
    assert not big, big


def test_at_most_three_long_functions(modules: list[Module]) -> None:
    long = [f"{m.name}.{n.name}: {size}" for m, n, size in _defs(modules)
            if not isinstance(n, ast.ClassDef) and size > MAX_FUNCTION_LINES]
    assert len(long) <= MAX_LONG_FUNCTIONS, long


def test_no_comment_points_at_a_file_the_project_lacks(modules: list[Module]) -> None:
    missing = [f"{m.path.relative_to(REPO)}" for m in modules if "DESIGN.md" in m.path.read_text()]
    assert not missing, f"these cite DESIGN.md, which is not in the repository (cite docs/design.md): {missing}"
