#!/usr/bin/env python3
"""The shape guard: fails on an import circle between source files and on a non-test
source file over 600 lines. `scripts/test.sh` runs it first; run it alone with

    python3 scripts/shape.py            # the whole workspace
    python3 scripts/shape.py --verbose  # and every file's imports
    python3 scripts/shape.py --report   # and the longest functions, the lines per crate

An import is a `use` of `crate::`, `super::` or `self::` (or of a child module by its
name), or such a path written inline (`crate::config::Settings`): the file that uses it
depends on the file that defines the name. A module reached through another imported as a
name (`use crate::dialect;` then `dialect::functions::udfs()`) is a name of that module's
file too. A name a module only re-exports (`pub use
child::Name`) is followed to the file that defines it. `mod child;` is not an import.
Files A and B are in a circle when each depends on the other, through any chain.

A test file (under a crate's `tests/` folder, a `tests.rs`, or a module `tests/`) is
neither counted nor measured, and `#[cfg(test)]` items are left out of the imports.
"""

import os
import re
import sys

MAX_LINES = 600
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if "--root" in sys.argv:  # another checkout, e.g. an older commit's, to compare
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1])

ITEM_RE = re.compile(
    r"\b(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|const\s+|unsafe\s+|extern\s+\"C\"\s+)*"
    r"(fn|struct|enum|trait|type|const|static|union|mod)\s+([A-Za-z_][A-Za-z0-9_]*)"
)
MACRO_RE = re.compile(r"macro_rules!\s*([A-Za-z_][A-Za-z0-9_]*)")
USE_RE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);")
MOD_RE = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;")
PATH_RE = re.compile(r"(?<![A-Za-z0-9_:])((?:[A-Za-z_][A-Za-z0-9_]*\s*::\s*)+[A-Za-z_][A-Za-z0-9_]*)")


def strip(text):
    """The code without comments, string and char literals (each replaced by spaces, so
    that line numbers stay), and without `#[cfg(test)]` items."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:j]) + '"')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:i + 12])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return drop_test_items("".join(out))


def drop_test_items(code):
    """Blanks each item marked `#[cfg(test)]` (up to its `;` or its closing brace)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        j, depth = m.end(), 0
        while j < len(code):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif code[j] == ";" and depth == 0:
                j += 1
                break
            j += 1
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():j]) + code[j:]


def expand_use(tree):
    """`a::{b, c::{d as e}, self}` -> [(['a','b'], 'b'), (['a','c','d'], 'e'), (['a'], 'a')]."""
    tree = re.sub(r"\s+", " ", tree).strip()
    tree = re.sub(r"\s*(::|\{|\}|,)\s*", r"\1", tree)
    out = []

    def walk(prefix, t):
        parts, depth, cur = [], 0, ""
        for ch in t:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        for p in filter(None, parts):
            if "{" in p:
                head, rest = p.split("{", 1)
                walk(prefix + [s for s in head.split("::") if s], rest[:-1])
                continue
            path, _, alias = p.partition(" as ")
            segs = [s for s in path.split("::") if s]
            if segs and segs[-1] == "self":
                segs = segs[:-1]
            full = prefix + segs
            if full:
                out.append((full, alias or full[-1]))

    walk([], tree)
    return out


class Crate:
    def __init__(self, name, root_file):
        self.name = name
        self.modules = {}  # module path (tuple) -> file
        self.files = {}  # file -> module path
        self.load(root_file, ())

    def load(self, path, mod_path):
        if not os.path.exists(path) or path in self.files:
            return
        self.modules[mod_path] = path
        self.files[path] = mod_path
        code = strip(open(path, encoding="utf-8").read())
        base = os.path.dirname(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        is_dir_owner = stem in ("mod", "lib", "main") or mod_path == ()
        child_dir = base if is_dir_owner else os.path.join(base, stem)
        for m in MOD_RE.finditer(code):
            name = m.group(1)
            before = code[max(0, m.start() - 200):m.start()]
            attr = re.search(r'#\[path\s*=\s*"([^"]*)"\]\s*(?:pub(?:\([^)]*\))?\s+)?$', before)
            if attr:
                continue  # a file shared by path (a test helper): not part of this tree
            for cand in (os.path.join(child_dir, name + ".rs"), os.path.join(child_dir, name, "mod.rs")):
                if os.path.exists(cand):
                    self.load(cand, mod_path + (name,))
                    break


def is_test_file(rel):
    parts = rel.split(os.sep)
    return (
        parts[-1] == "tests.rs"
        or "tests" in parts[:-1]
        or (len(parts) > 1 and parts[0] == "tests")
        or parts[0] == "fuzz"
    )


def crate_roots():
    """(crate name, root file) for every library, binary and bench of the workspace."""
    roots = []
    for member in ["."] + workspace_members():
        base = os.path.join(ROOT, member)
        for f in ("src/lib.rs", "src/main.rs"):
            p = os.path.join(base, f)
            if os.path.exists(p):
                roots.append((member + ":" + f, p))
        for d in ("src/bin", "benches"):
            dd = os.path.join(base, d)
            if os.path.isdir(dd):
                for f in sorted(os.listdir(dd)):
                    if f.endswith(".rs"):
                        roots.append((member + ":" + d + "/" + f, os.path.join(dd, f)))
    return roots


def workspace_members():
    text = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    m = re.search(r"members\s*=\s*\[([^\]]*)\]", text)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def definitions(code):
    names = {m.group(2) for m in ITEM_RE.finditer(code)}
    names |= {m.group(1) for m in MACRO_RE.finditer(code)}
    return names


def analyse(crate, codes, edges):
    defs = {f: definitions(codes[f]) for f in crate.files}
    uses = {f: [(bool(m.group(1)), expand_use(m.group(2))) for m in USE_RE.finditer(codes[f])] for f in crate.files}
    children = {}
    for mp in crate.modules:
        if mp:
            children.setdefault(mp[:-1], set()).add(mp[-1])

    def absolute(mod_path, segs):
        """A path as written in module `mod_path`, made absolute; None if external."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return list(segs[1:])
        if head == "self":
            return list(mod_path) + list(segs[1:])
        if head == "super":
            mp, rest = list(mod_path), list(segs)
            while rest and rest[0] == "super":
                if not mp:
                    return None
                mp, rest = mp[:-1], rest[1:]
            return mp + rest
        if head in children.get(tuple(mod_path), ()):
            return list(mod_path) + list(segs)
        return None

    def resolve(abs_path, seen=()):
        """The file defining the item `abs_path` names, following re-exports."""
        mp, i = (), 0
        while i < len(abs_path) and mp + (abs_path[i],) in crate.modules:
            mp, i = mp + (abs_path[i],), i + 1
        f = crate.modules.get(mp)
        if f is None or i == len(abs_path):
            return f, None  # a module itself
        name = abs_path[i]
        if name in defs[f] or (f, name) in seen:
            return f, name
        for _pub, items in uses[f]:
            for full, alias in items:
                if alias == name or full[-1] == "*":
                    target = absolute(mp, full if full[-1] != "*" else full[:-1] + [name])
                    if target is not None:
                        rf, rn = resolve(target, seen + ((f, name),))
                        if rf is not None and rn is not None and name in defs.get(rf, ()):
                            return rf, rn
                        if rf is not None and full[-1] != "*":
                            return rf, rn
        return f, name

    for f, mp in crate.files.items():
        aliases = {}
        for _pub, items in uses[f]:
            for full, alias in items:
                target = absolute(mp, full)
                if target is None:
                    continue
                if full[-1] == "*":
                    tf, _ = resolve(target[:-1])
                    if tf and tf != f:
                        edges.setdefault((f, tf), set()).add("*")
                    continue
                tf, tn = resolve(target)
                if tf is None:
                    continue
                if tn is None:
                    aliases[alias] = target  # a module: what follows it is resolved below
                elif tf != f:
                    edges.setdefault((f, tf), set()).add(tn)
        code_wo_use = USE_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), codes[f])
        for m in PATH_RE.finditer(code_wo_use):
            segs = [s.strip() for s in m.group(1).split("::")]
            if segs[0] in aliases:
                target = aliases[segs[0]] + segs[1:]
                # `use crate::dialect;` then `dialect::functions::...`: the module
                # `functions` is a name the file of `dialect` declares.
                parent = tuple(aliases[segs[0]])
                if parent + (segs[1],) in crate.modules and crate.modules[parent] != f:
                    edges.setdefault((f, crate.modules[parent]), set()).add(segs[1])
            else:
                target = absolute(mp, segs)
            if target is None:
                continue
            tf, tn = resolve(target)
            if tf is not None and tn is not None and tf != f:
                edges.setdefault((f, tf), set()).add(tn)


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    graph = {}
    for (a, b) in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


FN_RE = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def functions(code):
    """(lines, name, first line) of every function with a body."""
    out = []
    for m in FN_RE.finditer(code):
        open_at = code.find("{", m.end())
        semi = code.find(";", m.end())
        if open_at < 0 or (0 <= semi < open_at):
            continue
        depth, j = 0, open_at
        while j < len(code):
            depth += code[j] == "{"
            depth -= code[j] == "}"
            if depth == 0:
                break
            j += 1
        first = code.count("\n", 0, m.start()) + 1
        out.append((code.count("\n", m.start(), j) + 1, m.group(1), first))
    return out


def report(all_files, rel):
    fns = []
    per_crate = {}
    for f in sorted(all_files):
        code = strip(open(f, encoding="utf-8").read())
        fns.extend((n, rel(f), name, line) for n, name, line in functions(code))
        crate = rel(f).split(os.sep)[0] if rel(f).split(os.sep)[0] in workspace_members() else "."
        files, lines = per_crate.get(crate, (0, 0))
        per_crate[crate] = (files + 1, lines + sum(1 for _ in open(f, encoding="utf-8")))
    print("longest functions:")
    for n, f, name, line in sorted(fns, reverse=True)[:8]:
        print(f"  {n:4} lines  {name} ({f}:{line})")
    for crate, (files, lines) in sorted(per_crate.items()):
        print(f"crate {crate}: {files} non-test source files, {lines} lines")


def main():
    verbose = "--verbose" in sys.argv
    rel = lambda p: os.path.relpath(p, ROOT)
    edges, all_files = {}, set()
    for name, root in crate_roots():
        crate = Crate(name, root)
        files = {f: None for f in crate.files if not is_test_file(rel(f))}
        for f in list(crate.files):
            if f not in files:
                del crate.modules[crate.files.pop(f)]
        codes = {f: strip(open(f, encoding="utf-8").read()) for f in crate.files}
        analyse(crate, codes, edges)
        all_files |= set(crate.files)
    long_files = []
    for f in sorted(all_files):
        n = sum(1 for _ in open(f, encoding="utf-8"))
        if n > MAX_LINES:
            long_files.append((n, rel(f)))
    found = circles(edges)
    if verbose:
        for (a, b), names in sorted(edges.items()):
            print(f"{rel(a)} -> {rel(b)}: {', '.join(sorted(names))}")
    for i, comp in enumerate(found, 1):
        print(f"circle {i}: {', '.join(rel(f) for f in comp)}")
        for (a, b), names in sorted(edges.items()):
            if a in comp and b in comp:
                print(f"  {rel(a)} -> {rel(b)}: {', '.join(sorted(names))}")
    for n, f in sorted(long_files, reverse=True):
        print(f"over {MAX_LINES} lines: {f} ({n})")
    if "--report" in sys.argv:
        report(all_files, rel)
    print(
        f"shape: {len(all_files)} source files, {len(found)} import circles, "
        f"{len(long_files)} files over {MAX_LINES} lines"
    )
    return 1 if found or long_files else 0


if __name__ == "__main__":
    sys.exit(main())
