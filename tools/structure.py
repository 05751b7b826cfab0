"""Import structure of a package: import cycles, _private names taken from other modules, and
module sizes. Usage: python3 structure.py src/virnucpro [MAX_LINES]. Prints one line; exit 1 if any
rule is broken."""
# Provenance: a copy of the team's shared/tools/structure.py (outside this repository), so that a
# clean clone can check its own layout; changed only by two list literals that ruff asks for.
import ast
import sys
from pathlib import Path

root = Path(sys.argv[1])
max_lines = int(sys.argv[2]) if len(sys.argv) > 2 else 450
pkg = root.name
mods = {}
for f in root.rglob("*.py"):
    rel = f.relative_to(root.parent).with_suffix("")
    name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    mods[name] = f
edges, private, big = {m: set() for m in mods}, [], []
for m, f in mods.items():
    src = f.read_text()
    n = src.count("\n")
    if n > max_lines:
        big.append(f"{m} ({n})")
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = m.split(".")[: len(m.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(pkg):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in mods:
                    edges[m].add(sub)
                elif target in mods:
                    edges[m].add(target)
                    if a.name.startswith("_") and not a.name.startswith("__") and target != m:
                        private.append(f"{m} <- {target}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(pkg) and a.name in mods:
                    edges[m].add(a.name)
# cycles among modules (ignoring package __init__ re-exports)
def cycles():
    found, state = [], {}
    def dfs(u, path):
        state[u] = 1
        for v in edges[u]:
            if v == u or mods[v].name == "__init__.py":
                continue
            if state.get(v) == 1:
                found.append([*path[path.index(v):], v])
            elif not state.get(v):
                dfs(v, [*path, v])
        state[u] = 2
    for u in edges:
        if not state.get(u):
            dfs(u, [u])
    return found
cyc = cycles()
print(f"{len(mods)} modules; cycles: {len(cyc)}"
      + (f" e.g. {' -> '.join(cyc[0])}" if cyc else "")
      + f"; private imports: {len(private)}" + (f" e.g. {private[0]}" if private else "")
      + f"; over {max_lines} lines: {', '.join(big) or 'none'}")
for c in cyc:
    print("  cycle: " + " -> ".join(c))
for p in private:
    print("  private import: " + p)
sys.exit(1 if cyc or private or big else 0)
