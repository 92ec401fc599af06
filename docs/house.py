"""The codebase's size budgets, measured: lines per file, the longest functions, imports between our files.

    python docs/house.py            # a report; exit 1 if a budget is broken
    python docs/house.py --quiet    # only the budget lines

Budgets: the seven core files together <= 2,900 lines (2,500 for VLM + 400 for All-in-One's raw frames); none of
them, and none of the files split off from them (COMPONENTS), over 450; no function over 60 lines; at least 18% of
each component file's lines comments or docstrings ("about a fifth"); every import of our own modules at the top
of a file and pointing down the layers below (so there can be no cycle).
"""
import argparse
import ast
import io
import os
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ["vlm.py", "masking.py", "losses.py", "data.py", "train.py", "finetune.py", "evaluate.py"]
# files that hold a part of the method or its plumbing, split off from the core files: same budgets per file
COMPONENTS = CORE + ["allinone.py", "checkpoint.py", "common.py", "tokens.py", "readers.py", "video.py", "metrics.py", "probes.py", "bert.py", "engine.py", "tasks.py"]
# the import order: a module may import only modules of an EARLIER layer (one-way flow: a lower file never needs a higher one)
LAYERS = [["common", "engine", "tokens", "masking", "plots", "metrics", "video"], ["bert", "readers"], ["vlm"],
          ["allinone", "losses"], ["data", "checkpoint"], ["world"], ["evaluate"], ["probes", "tasks"], ["train"],
          ["finetune"], ["experiments"], ["use", "bench"]]


def our_modules():
    return sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))


def scan(name, ours):
    """-> (lines, [(function, length)], {imported module: top-level?}) for one top-level file."""
    src = open(os.path.join(ROOT, name + ".py")).read()
    tree = ast.parse(src)
    funcs = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    top = {id(n) for n in tree.body}
    imports = {}
    for n in ast.walk(tree):
        mods = []
        if isinstance(n, ast.Import):
            mods = [a.name.split(".")[0] for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            mods = [n.module.split(".")[0]]
        for m in mods:
            if m in ours and m != name:
                imports[m] = imports.get(m, True) and id(n) in top
    return src.count("\n"), funcs, imports


def commented(name):
    """Share of a file's lines that are comments: docstring lines, `#` lines and lines with a trailing `#`."""
    src = open(os.path.join(ROOT, name)).read()
    lines = set()
    for n in ast.walk(ast.parse(src)):
        body = getattr(n, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    lines.update(t.start[0] for t in toks if t.type == tokenize.COMMENT)
    return len(lines) / max(1, src.count("\n"))


def find_cycle(graph):
    """A list of modules forming an import cycle, or None (depth-first search)."""
    state = {}

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d, path + [d])
                if found:
                    return found
        state[m] = 2
        return None

    for m in graph:
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="print only the budget lines")
    args = ap.parse_args()
    ours = our_modules()
    info = {m: scan(m, ours) for m in ours}
    broken = []
    core_lines = sum(info[f[:-3]][0] for f in CORE if f[:-3] in info)
    if core_lines > 2900:
        broken.append(f"core files {core_lines} lines > 2,900")
    present = [f for f in COMPONENTS if f[:-3] in info]
    for f in present:
        if info[f[:-3]][0] > 450:
            broken.append(f"{f} {info[f[:-3]][0]} lines > 450")
    share = {f: commented(f) for f in present}
    broken += [f"{f} {100 * c:.0f}% comment lines < 18%" for f, c in share.items() if c < 0.18]
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    broken += [f"{m} (layer {layer.get(m)}) imports {d} (layer {layer.get(d)}): not a lower layer"
               for m, (_, _, imp) in info.items() for d in imp
               if layer.get(m) is None or layer.get(d) is None or layer[d] >= layer[m]]
    long = sorted(((length, f"{m}.{fn}") for m, (_, funcs, _) in info.items() for fn, length in funcs if length > 60),
                  reverse=True)
    broken += [f"{name} {length} lines > 60" for length, name in long]
    hidden = [f"{m} imports {d} inside a function" for m, (_, _, imp) in info.items() for d, top in imp.items() if not top]
    broken += hidden
    cycle = find_cycle({m: sorted(imp) for m, (_, _, imp) in info.items()})
    if cycle:
        broken.append("import cycle: " + " -> ".join(cycle))
    if not args.quiet:
        print("lines: " + ", ".join(f"{m}.py {info[m][0]}" for m in ours) + f"; core total {core_lines}; "
              f"core + split-off parts {sum(info[f[:-3]][0] for f in present)}")
        print("comment lines: " + ", ".join(f"{f} {100 * c:.0f}%" for f, c in share.items()))
        for m in ours:
            if info[m][2]:
                print(f"  {m} imports {', '.join(sorted(info[m][2]))}")
    print("budgets: all met" if not broken else "budgets broken:\n  " + "\n  ".join(broken))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
