#!/usr/bin/env python3
"""Self cost per function in callgrind dump B minus dump A, divided by N (the transactions B ran
more than A): where the instructions of one transaction go. Used by bench/pgprofile.sh.
Usage: cg-diff.py A B N [TOP]"""
import re, sys, collections

def self_costs(path):
    names, costs = {}, collections.Counter()
    fn, after_call = None, False
    for line in open(path, errors="replace"):
        if line.startswith(("fn=")):
            m = re.match(r"fn=(?:\((\d+)\))?\s*(.*)", line.strip())
            ident, name = m.group(1), m.group(2)
            if ident and name:
                names[ident] = name
            fn = names.get(ident, name) if ident else name
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if after_call:
                after_call = False
            elif fn and len(parts) >= 2:
                costs[fn] += int(parts[1])
            continue
    return costs

a, b, n = self_costs(sys.argv[1]), self_costs(sys.argv[2]), int(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
d = {k: (b[k] - a.get(k, 0)) / n for k in b}
total = sum(d.values())
print(f"  {total:,.0f} instructions per transaction (self cost, by function):")
for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {v:8,.0f} {100 * v / total:5.1f}%  {k[:110]}")
