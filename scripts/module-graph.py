#!/usr/bin/env python3
"""The module graph of src/ from its `crate::` paths (comments and unit tests left out), and
the graph of its top-level folders. Prints both; exits 1 when either has a cycle (a folder
may only use the folders listed before it in src/lib.rs).

usage: scripts/module-graph.py [--modules]
"""
import glob
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    m = os.path.relpath(path, SRC)[:-3]
    return re.sub(r"/mod$", "", m).replace("/", "::")


def code_of(text):
    """The text without its unit tests and comment lines."""
    i = text.find("#[cfg(test)]\nmod tests")
    if i >= 0:
        text = text[:i]
    return "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))


def paths_in(code):
    """Every `crate::a::b` path, braces of `use crate::{...}` expanded one level."""
    out = []
    brace = re.compile(r"crate::\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
    for m in brace.finditer(code):
        depth, cur = 0, ""
        for ch in m.group(1) + ",":
            depth += ch == "{"
            depth -= ch == "}"
            if ch == "," and depth == 0:
                out.append(re.sub(r"::\{.*", "", cur.strip(), flags=re.S))
                cur = ""
            else:
                cur += ch
    for m in re.finditer(r"crate::([a-z_0-9]+(?:::[a-z_0-9]+)*)", brace.sub("", code)):
        out.append(m.group(1))
    return [p for p in out if p]


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    files = {}
    for f in glob.glob(os.path.join(SRC, "**", "*.rs"), recursive=True):
        m = module_of(f)
        if m not in ("lib", "main"):
            files[m] = f
    mods = set(files)

    def resolve(path):
        parts = path.split("::")
        for k in range(len(parts), 0, -1):
            c = "::".join(parts[:k])
            if c in mods:
                return c
        return None

    deps = {m: set() for m in mods}
    for m, f in files.items():
        with open(f, encoding="utf-8") as fh:
            code = code_of(fh.read())
        for p in paths_in(code):
            r = resolve(p)
            # a module may use its ancestors (Rust's privacy makes them visible to it)
            if r and r != m and not m.startswith(r + "::"):
                deps[m].add(r)
    top = {}
    for m, ds in deps.items():
        for d in ds:
            a, b = m.split("::")[0], d.split("::")[0]
            if a != b:
                top.setdefault(a, set()).add(b)
    if "--modules" in sys.argv:
        for m in sorted(deps):
            print(f"{m} -> {', '.join(sorted(deps[m]))}")
    for t in sorted(top):
        name = t + "/" if os.path.isdir(os.path.join(SRC, t)) else t + ".rs"
        print(f"{name} -> {', '.join(sorted(top[t]))}")
    bad = cycles(deps) + cycles(top)
    for c in bad:
        print("cycle:", " <-> ".join(c), file=sys.stderr)
    print("module cycles: none" if not bad else f"{len(bad)} cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
