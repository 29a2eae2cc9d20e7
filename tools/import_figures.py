"""Figures about faxbridge's import graph: modules in import cycles, upward imports
(against the layer order below), and the largest modules. Run from the repository
root: `python3 tools/import_figures.py`. Imports inside functions count too (grimp
sees them), TYPE_CHECKING-only imports are counted as well: a cycle through a type
hint is still a cycle for the reader."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

# Top to bottom; a module importing one of a higher layer is an upward import.
LAYERS = [
    ["faxbridge.__main__", "faxbridge.cli", "faxbridge.app"],
    ["faxbridge.web", "faxbridge.smtp", "faxbridge.workers"],
    ["faxbridge.inbound", "faxbridge.outbound", "faxbridge.housekeeping"],
    ["faxbridge.mail", "faxbridge.retarus", "faxbridge.intake", "faxbridge.simulator",
     "faxbridge.preflight", "faxbridge.rules_file"],
    ["faxbridge.runner", "faxbridge.runtime", "faxbridge.metrics", "faxbridge.store",
     "faxbridge.listen", "faxbridge.basic_auth", "faxbridge.retry"],
    ["faxbridge.config", "faxbridge.errors", "faxbridge.replies", "faxbridge.aio",
     "faxbridge.resources", "faxbridge.logsetup"],
]


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                return i
    return None


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))
    g = grimp.build_graph("faxbridge", include_external_packages=False)
    mods = sorted(m for m in g.modules if m != "faxbridge")
    # strongly connected components (Tarjan) over module → imported module
    edges = {m: sorted(g.find_modules_directly_imported_by(m)) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in mods:
        if m not in index:
            strong(m)
    cyc = sorted(sccs, key=len, reverse=True)
    print(f"modules: {len(mods)}")
    print(f"modules in import cycles: {sum(len(c) for c in cyc)} "
          f"({len(cyc)} cycle group(s))")
    for c in cyc:
        print("  cycle:", ", ".join(c))
    upward = []
    for m, imported in edges.items():
        for t in imported:
            a, b = layer_of(m), layer_of(t)
            if a is not None and b is not None and b < a:
                upward.append((m, t))
    print(f"upward imports (against the layer order): {len(upward)}")
    for m, t in upward:
        print(f"  {m} -> {t}")
    app_users = sorted(m for m in g.find_modules_that_directly_import("faxbridge.app"))
    print(f"modules importing faxbridge.app: {len(app_users)} {app_users}")
    sizes = sorted(((sum(1 for _ in p.open()), str(p)) for p in Path("faxbridge").rglob("*.py")),
                   reverse=True)
    print("largest modules:", ", ".join(f"{p} {n}" for n, p in sizes[:6]))


if __name__ == "__main__":
    main()
