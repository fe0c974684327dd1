"""Pooled (centralised) reference for tessera-analytics on Fed-Heart-Disease.

Regenerate (from the repository root):

    python3 crates/tessera-analytics/tests/reference/analytics_reference.py \
        > crates/tessera-analytics/tests/reference/heart.json

Reads the four UCI files as examples/fed-heart-disease.toml does (no header,
'?' missing, slope/ca/thal ignored, rows with a missing value dropped, the
target num as the classes '0' and 'not 0'), pools the rows (or keeps one
site's for the per-site answers) and computes every statistic of the
queries below directly with numpy: sums, means, variances and covariances
(ddof 1), Pearson correlations, histograms, crosstabs. Quantiles, min/max
and count-distinct are estimators defined by the crate (a 2^10-leaf tree
over the bounds, read at rank q (n - 1) + 0.5; linear counting on a 4096-
cell sketch of SplitMix64 hashes); they are computed here from the pooled
rows in the same way. tests/reference.rs compares the crate's noiseless
answers with this file to 1e-9 relative. Needs only numpy.
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
DATA = ROOT / "data" / "uci-heart-disease"
SITES = ["cleveland", "hungarian", "switzerland", "va"]
NAMES = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach",
         "exang", "oldpeak", "slope", "ca", "thal", "num"]
USED = [n for n in NAMES if n not in ("slope", "ca", "thal")]
BOUNDS = {"age": (0, 120), "sex": (0, 1), "trestbps": (0, 250), "chol": (0, 700),
          "fbs": (0, 1), "thalach": (50, 220), "exang": (0, 1), "oldpeak": (-3, 7)}
LEVELS = {"cp": ["1", "2", "3", "4"], "restecg": ["0", "1", "2"], "num": ["0", "not 0"]}
DEPTH = 10
CELLS = 4096
M64 = (1 << 64) - 1


def level(v):
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def read_site(name):
    rows = []
    for line in (DATA / f"processed.{name}.data").read_text().splitlines():
        if not line.strip():
            continue
        fields = dict(zip(NAMES, line.split(",")))
        if any(fields[c].strip() == "?" for c in USED):
            continue
        rows.append({c: float(fields[c]) for c in USED})
    cols = {c: np.array([r[c] for r in rows]) for c in USED}
    cat = {
        "cp": np.array([level(v) for v in cols["cp"]]),
        "restecg": np.array([level(v) for v in cols["restecg"]]),
        "num": np.array(["0" if v == 0 else "not 0" for v in cols["num"]]),
    }
    return cols, cat


def clamp(c, x):
    lo, hi = BOUNDS[c]
    return np.clip(x, lo, hi)


def unit(c, x):
    lo, hi = BOUNDS[c]
    return np.array([(min(max(v, lo), hi) - lo) / (hi - lo) for v in x])


def bin_of(u, leaves):
    return min(int(u * leaves), leaves - 1)


def tree_value(c, x, rank):
    leaves = 1 << DEPTH
    counts = [0] * leaves
    for u in unit(c, x):
        counts[bin_of(u, leaves)] += 1
    levels = {DEPTH: counts}
    for l in range(DEPTH - 1, 0, -1):
        below = levels[l + 1]
        levels[l] = [below[2 * i] + below[2 * i + 1] for i in range(len(below) // 2)]
    r, node = rank, 0
    for l in range(1, DEPTH + 1):
        left = 2 * node
        if r < levels[l][left]:
            node = left
        else:
            r -= levels[l][left]
            node = left + 1
    cnt = levels[DEPTH][node]
    frac = min(max(r / cnt, 0.0), 1.0) if cnt > 0 else 0.5
    lo, hi = BOUNDS[c]
    return lo + (hi - lo) * ((node + frac) / leaves)


def mix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def count_distinct(x):
    cells = [0] * CELLS
    for v in x:
        v = 0.0 if v == 0.0 else float(v)
        cells[mix(struct.unpack("<Q", struct.pack("<d", v))[0]) % CELLS] += 1
    zero = sum(1 for c in cells if c < 0.5)
    return -CELLS * math.log(zero / CELLS) if zero > 0 else CELLS * math.log(CELLS)


def histogram(c, x, bins):
    out = [0.0] * bins
    for u in unit(c, x):
        out[bin_of(u, bins)] += 1
    return out


def matrix(kind, cs, cols):
    xs = [clamp(c, cols[c]) for c in cs]
    m = np.cov(np.vstack(xs), ddof=1) if kind == "cov" else np.corrcoef(np.vstack(xs))
    if len(cs) == 2:
        return [float(m[0, 1])]
    return [float(v) for v in m.flatten()]


def stats(items, cols, cat):
    n = len(cols["age"])
    out = {"rows": [float(n)]}
    for item in items:
        kind, args = item[0], item[1:]
        name = item_name(item)
        if kind == "count":
            out[name] = [float(n)]
        elif kind == "sum":
            out[name] = [float(np.sum(clamp(args[0], cols[args[0]])))]
        elif kind == "mean":
            out[name] = [float(np.mean(clamp(args[0], cols[args[0]])))]
        elif kind == "variance":
            out[name] = [float(np.var(clamp(args[0], cols[args[0]]), ddof=1))]
        elif kind == "stddev":
            out[name] = [float(np.std(clamp(args[0], cols[args[0]]), ddof=1))]
        elif kind == "histogram":
            out[name] = histogram(args[0], cols[args[0]], args[1])
        elif kind == "quantile":
            out[name] = [tree_value(args[0], cols[args[0]], args[1] * (n - 1) + 0.5)]
        elif kind == "min":
            out[name] = [tree_value(args[0], cols[args[0]], 0.5)]
        elif kind == "max":
            out[name] = [tree_value(args[0], cols[args[0]], n - 0.5)]
        elif kind in ("corr", "cov"):
            out[name] = matrix(kind, list(args), cols)
        elif kind == "crosstab":
            a, b = args
            out[name] = [float(np.sum((cat[a] == la) & (cat[b] == lb)))
                         for la in LEVELS[a] for lb in LEVELS[b]]
        elif kind == "count_distinct":
            out[name] = [count_distinct(cols[args[0]])]
    return out


def item_name(item):
    kind, args = item[0], item[1:]
    if kind == "count":
        return "count(*)"
    if kind == "histogram":
        return f"histogram({args[0]}, {args[1]}" + (", 'hierarchical')" if len(args) > 2 else ")")
    if kind == "quantile":
        return f"quantile({args[0]}, {args[1]})"
    return f"{kind}({', '.join(args)})"


CLAMPS = " CLAMP " + ", ".join(f"{c} {lo} {hi}" for c, (lo, hi) in BOUNDS.items())

QUERIES = [
    {
        "items": [("count",), ("sum", "chol"), ("mean", "age"), ("variance", "trestbps"),
                  ("stddev", "thalach"), ("min", "oldpeak"), ("max", "oldpeak"),
                  ("quantile", "age", 0.5), ("quantile", "chol", 0.9)],
        "group_by": [],
        "where": lambda cols, cat: np.ones(len(cols["age"]), dtype=bool),
        "sql_where": "",
        "per_site": True,
    },
    {
        "items": [("count",), ("mean", "chol"), ("histogram", "age", 10), ("corr", "age", "thalach")],
        "group_by": ["cp"],
        "where": lambda cols, cat: cols["sex"] == 1,
        "sql_where": " WHERE sex = 1",
        "per_site": False,
    },
    {
        "items": [("cov", "age", "chol", "thalach"), ("corr", "age", "chol", "thalach"),
                  ("crosstab", "cp", "restecg"), ("count_distinct", "age"),
                  ("histogram", "thalach", 16, "hierarchical")],
        "group_by": ["num"],
        "where": lambda cols, cat: ((cols["age"] >= 40) & ~np.isin(cat["restecg"], ["2"]))
        | (cols["oldpeak"] > 2),
        "sql_where": " WHERE age >= 40 AND NOT restecg IN (2) OR oldpeak > 2",
        "per_site": False,
    },
]


def sql(q):
    items = [item_name(i) for i in q["items"]]
    select = ", ".join(q["group_by"] + items)
    group = f" GROUP BY {', '.join(q['group_by'])}" if q["group_by"] else ""
    per = " PER SITE" if q["per_site"] else ""
    return f"SELECT {select} FROM data{q['sql_where']}{group}{per}{CLAMPS}"


def answer(q, cols, cat):
    keep = q["where"](cols, cat)
    cols = {c: v[keep] for c, v in cols.items()}
    cat = {c: v[keep] for c, v in cat.items()}
    if not q["group_by"]:
        return [{"key": [], "statistics": stats(q["items"], cols, cat)}]
    g = q["group_by"][0]
    groups = []
    for lv in LEVELS[g]:
        sel = cat[g] == lv
        groups.append({"key": [lv], "statistics": stats(
            q["items"], {c: v[sel] for c, v in cols.items()}, {c: v[sel] for c, v in cat.items()})})
    return groups


def main():
    sites = {s: read_site(s) for s in SITES}
    pooled_cols = {c: np.concatenate([sites[s][0][c] for s in SITES]) for c in USED}
    pooled_cat = {c: np.concatenate([sites[s][1][c] for s in SITES]) for c in LEVELS}
    out = {"command": "python3 crates/tessera-analytics/tests/reference/analytics_reference.py "
                      "> crates/tessera-analytics/tests/reference/heart.json",
           "numpy": np.__version__, "queries": []}
    for q in QUERIES:
        answers = [{"scope": "federation", "groups": answer(q, pooled_cols, pooled_cat)}]
        if q["per_site"]:
            for s in SITES:
                answers.append({"scope": s, "groups": answer(q, *sites[s])})
        out["queries"].append({"query": sql(q), "answers": answers})
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
