#!/usr/bin/env python3
"""Fails when modules of src/ depend on each other in a circle.

A module depends on another when it names an item of it through a path
(`use crate::a::b`, `super::x::f(..)`, `self::y::T`), a `pub use` re-export
included. Each file is a module (mod.rs stands for its folder). Prints every
circle found and exits 1, or says how many modules it read and exits 0.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_of(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        return ()
    return tuple(parts)


def strip_comments(text):
    """Comments, strings and character literals out, in one left-to-right pass."""
    token = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])'", re.S)
    return token.sub(lambda m: '""' if m.group(0)[0] in "\"'" else "", text)


def without_tests(text):
    # The unit tests of a file may name anything; they are not its design.
    at = re.search(r"#\[cfg\([^\]]*\btest\b[^\]]*\]\s*mod tests", text)
    return text[: at.start()] if at else text


def uses(text):
    """Every path of a `use` item, braces expanded, and every inline path."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand(m.group(1).replace("\n", " ").replace(" ", ""))
    paths += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", text)
    return paths


def expand(tree):
    if "{" not in tree:
        return [tree]
    head, inner = tree.split("{", 1)
    inner = inner[: inner.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in filter(None, parts):
        out += [head + q for q in expand(p)]
    return out


def resolve(path, here, modules):
    words = path.split("::")
    if words[0] == "crate":
        base, words = (), words[1:]
    elif words[0] == "self":
        base, words = here, words[1:]
    elif words[0] == "super":
        base = here
        while words and words[0] == "super":
            base, words = base[:-1], words[1:]
    else:
        return None
    target = base
    for w in words:
        if target + (w,) in modules:
            target = target + (w,)
        else:
            break
    return target if target != here else None


def main():
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f): f for f in files}
    graph = {m: set() for m in modules}
    for m, f in modules.items():
        text = without_tests(strip_comments(f.read_text()))
        for p in uses(text):
            t = resolve(p, m, modules)
            if t is not None and t in modules and t != m and t != ():
                graph[m].add(t)
    circles = find_cycles(graph)
    for c in circles:
        print("circle: " + " -> ".join("::".join(x) or "crate" for x in c + [c[0]]))
    if circles:
        sys.exit(1)
    print(f"module-cycles: {len(modules)} modules, no circle")


def find_cycles(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    main()
