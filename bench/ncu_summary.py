#!/usr/bin/env python3
"""Sums kernel times from `ncu --csv --metrics gpu__time_duration.sum` by kernel name.
usage: ncu_summary.py FILE.csv [FIRST_ID LAST_ID]   (a range of launch IDs, e.g. one token)"""
import csv, re, sys
from collections import defaultdict

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
ix = {k: head.index(k) for k in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value", "Grid Size")}
lo, hi = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (0, 1 << 60)
tot = defaultdict(float)
cnt = defaultdict(int)
for r in rows[1:]:
    if not r[ix["ID"]].isdigit() or not lo <= int(r[ix["ID"]]) <= hi or r[ix["Metric Name"]] != "gpu__time_duration.sum":
        continue
    v = float(r[ix["Metric Value"]].replace(",", ""))
    unit = r[ix["Metric Unit"]]
    us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3}[unit] * v
    name = re.sub(r"\(.*", "", r[ix["Kernel Name"]])[:60] + " " + r[ix["Grid Size"]]
    tot[name] += us
    cnt[name] += 1
all_us = sum(tot.values())
print(f"launches {lo}..{hi}: {sum(cnt.values())} kernels, {all_us:.1f} us")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{v:10.1f} us {100 * v / all_us:5.1f}% {cnt[k]:5d}x  {k}")
