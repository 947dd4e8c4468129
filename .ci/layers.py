#!/usr/bin/env python3
"""The layers of a Rust crate's modules, checked: no module imports a higher layer, and no
cycle of imports leaves one folder.

    python3 .ci/layers.py krescent/src docs/architecture.md           # the check (CI)
    python3 .ci/layers.py krescent/src docs/architecture.md --edges   # also every file -> file edge

The layers are the table between `<!-- layers -->` and `<!-- /layers -->` in the architecture
document, lowest first: a row `| n | name | paths | ... |`, where paths are backticked and
relative to the source folder; a path ending in `/` is a folder. A file belongs to the layer
of the most specific path that covers it; a file no path covers, or a path that covers no
file, fails the check (the document must match the tree).

A file uses another when it names a path `crate::a::b::Name`, `super::Name` or `self::a::Name`
(in `use` or in code) that resolves to the other file's module. Names re-exported by a module
(`pub use ...`, `pub(crate) use ...`) are followed to the module that defines them, so a
re-export alone makes no edge: it is a public path, not a use (the name must not be used
elsewhere in the re-exporting file, or it counts). The check fails when a file uses one of a
higher layer, or when a strongly connected group of files (a cycle) spans two folders (a
folder's `mod.rs` counts as a file of the folder above too: it is how that folder sees the
child); a cycle inside one folder passes only when one of its files says why in a comment
containing `cycle:` (at the import that closes it). Unit tests (`#[cfg(test)] mod`) may use
anything and are not read. Reads text only: a macro-generated path or a glob
import can hide an edge, so open the code before you believe a result.

Adapted from the team's `module-cycles.py`, which finds the cycles alone.
"""
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
USE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+((?:::)?[A-Za-z_{][^;]*);", re.S)
PATH = re.compile(rf"\b((?:crate|super|self)(?:::{IDENT})+)")
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# Comments, string and character literals, in the order they come: what is left is code.
NOT_CODE = re.compile(
    r'//[^\n]*|/\*.*?\*/|\br(#*)".*?"\1|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'', re.S
)


def code(text: str) -> str:
    return NOT_CODE.sub(lambda m: '""' if m.group(0)[0] in "r\"'" else "", text)


def module_of(src: Path, f: Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def expand(tree: str) -> list:
    """`a::{b, c::{d, e as f}}` -> [([a, b], b), ([a, c, d], d), ([a, c, e], f)]"""
    tree = re.sub(r"\s+", " ", tree).strip()
    out = []

    def walk(prefix, s):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for item in (i.strip() for i in items):
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                walk(prefix + [p for p in head.replace(" ", "").split("::") if p], rest.rsplit("}", 1)[0])
                continue
            alias = None
            m = re.match(rf"(.*?)\s+as\s+({IDENT})$", item)
            if m:
                item, alias = m.group(1), m.group(2)
            path = prefix + [p for p in item.replace(" ", "").split("::") if p]
            if path and path[-1] == "self":
                path = path[:-1]
            if path:
                out.append((path, alias or path[-1]))

    walk([], tree)
    return out


def absolute(module: tuple, path: list, files=None) -> list:
    """`super::x`, `self::x` and a child's `x::y` in `module` as a path from the crate root;
    `None` for a path outside the crate."""
    here = list(module)
    if path and path[0] == "crate":
        return path[1:]
    if path and path[0] not in ("self", "super"):
        child = tuple(here + path[:1])
        return here + path if files is not None and child in files else None
    rest = list(path)
    if rest and rest[0] == "self":
        rest = rest[1:]
    while rest and rest[0] == "super":
        here = here[:-1]
        rest = rest[1:]
    return here + rest


def scopes(module: tuple, text: str) -> list:
    """[(module, its own text)] of a file's code: the file's module and each inline `mod x {`
    within it (so that `super::` resolves), without `#[cfg(test)]` modules (tests may use
    anything)."""
    out, own, i = [], [], 0
    pattern = re.compile(rf"(#\[cfg\(test\)\]\s*)?\bmod\s+({IDENT})\s*\{{")
    while True:
        m = pattern.search(text, i)
        if not m:
            own.append(text[i:])
            break
        own.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if not m.group(1):
            out += scopes(module + (m.group(2),), text[m.end():j - 1])
        i = j
    return [(module, "".join(own))] + out


def read_layers(doc: Path) -> list:
    """[(name, [paths])], lowest first, from the document's layer table."""
    text = doc.read_text()
    m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    if not m:
        sys.exit(f"{doc}: no `<!-- layers -->` ... `<!-- /layers -->` table")
    layers = []
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        layers.append((cells[1].strip("*` "), re.findall(r"`([^`]+)`", cells[2])))
    return layers


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__)
        return 2
    src, doc = Path(args[0]).resolve(), Path(args[1])
    files = {module_of(src, f): f for f in src.rglob("*.rs") if f.name != "build.rs"}
    raw = {m: f.read_text(errors="replace") for m, f in files.items()}
    text = {m: code(t) for m, t in raw.items()}
    rel = {m: str(f.relative_to(src)) for m, f in files.items()}
    failures = []

    # Layers: the most specific path covering a file decides.
    layers = read_layers(doc)
    rank, covered = {}, set()
    for m in files:
        best = None
        for i, (_, paths) in enumerate(layers):
            for p in paths:
                hit = rel[m] == p if not p.endswith("/") else rel[m].startswith(p)
                if hit and (best is None or len(p) > len(best[1])):
                    best = (i, p)
        if best is None:
            failures.append(f"{rel[m]}: in no layer of {doc}")
        else:
            rank[m] = best[0]
            covered.add(best[1])
    for _, paths in layers:
        for p in paths:
            if p not in covered:
                failures.append(f"{doc}: `{p}` holds no file of its layer")

    # Re-exports: (module, name) -> the module the name comes from.
    reexports = {}
    for m, t in text.items():
        for scope, own in scopes(m, t):
            for vis, block in USE.findall(own):
                if not vis:
                    continue
                for path, alias in expand(block):
                    target = absolute(scope, path, files)
                    if target and tuple(target[:-1]) in files and tuple(target[:-1]) != scope:
                        reexports[(scope, alias)] = tuple(target[:-1])

    def resolve(path: list) -> tuple:
        """The module file a path from the crate root lands in, following re-exports."""
        best, rest = (), path
        for i in range(len(path), 0, -1):
            if tuple(path[:i]) in files:
                best, rest = tuple(path[:i]), path[i:]
                break
        seen = set()
        while rest and (best, rest[0]) in reexports and (best, rest[0]) not in seen:
            seen.add((best, rest[0]))
            best = reexports[(best, rest[0])]
        return best

    edges = {}
    for m, t in text.items():
        for scope, own in scopes(m, t):
            body = USE.sub("", own)
            paths = []
            for vis, block in USE.findall(own):
                for path, alias in expand(block):
                    # A re-export is a public path, not a use, unless the file uses the name.
                    if vis and not re.search(rf"\b{re.escape(alias)}\b", body):
                        continue
                    # A glob names nothing; what it brings in is used by name elsewhere.
                    if path[-1] != "*":
                        paths.append(absolute(scope, path, files))
            paths += [absolute(scope, p.split("::"), files) for p in PATH.findall(body)]
            for p in filter(None, paths):
                target = resolve(p)
                if target != m and target in files:
                    edges.setdefault(m, {}).setdefault(target, set()).add(p[-1])

    # A use of a higher layer.
    for m in sorted(edges):
        for t, names in sorted(edges[m].items()):
            if m in rank and t in rank and rank[t] > rank[m]:
                failures.append(
                    f"{rel[m]} ({layers[rank[m]][0]}) uses {rel[t]} ({layers[rank[t]][0]}), "
                    f"a higher layer: {', '.join(sorted(names))}"
                )

    # Tarjan's strongly connected components
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            strong(v)

    if "--edges" in sys.argv:
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print(f"{rel[m]} -> {rel[t]}: {', '.join(sorted(edges[m][t]))}")
    for i, g in enumerate(groups, 1):
        # A folder's `mod.rs` is also a file of the folder above: it is that folder's view of
        # the child (`checkpoint/storage/mod.rs`, the storage contract, is `checkpoint`'s).
        folders = {str(Path(rel[m]).parent) for m in g}
        common = set.intersection(*(
            {str(Path(rel[m]).parent)} | ({str(Path(rel[m]).parent.parent)} if rel[m].endswith("/mod.rs") else set())
            for m in g
        ))
        explained = any("cycle:" in c for m in g for c in COMMENT.findall(raw[m]))
        verdict = (
            "spans folders " + ", ".join(sorted(folders)) if not common
            else "inside one folder" + ("" if explained else ", with no `cycle:` comment saying why")
        )
        print(f"cycle {i}: {len(g)} files, {verdict}")
        members = set(g)
        for m in g:
            for t, names in sorted(edges.get(m, {}).items()):
                if t in members:
                    print(f"  {rel[m]} -> {rel[t]}: {', '.join(sorted(names))}")
        if not common or not explained:
            failures.append(f"cycle {i} {verdict}")

    for line in failures:
        print(f"error: {line}")
    if not failures:
        counts = [sum(1 for m in rank if rank[m] == i) for i in range(len(layers))]
        summary = ", ".join(f"{name} {n}" for (name, _), n in zip(layers, counts))
        print(f"{len(files)} files in {len(layers)} layers ({summary}): no upward use, "
              f"{len(groups)} cycle(s), none leaving its folder")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
