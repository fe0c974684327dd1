"""What a Python client costs a round (BENCHMARKS.md, "Bring your own
model: the cost of a Python client").

Runs the same rounds three ways at SITES sites: Tessera's built-in logistic
regression doing almost no work (one step on one row a site), a Rust
external learner doing none, and a Python ``tessera.Client`` doing none
(``fit`` hands the parameters back, ``evaluate`` returns constants), and
prints each one's median seconds a round (the first round left out) over
REPEATS runs, and the Python client's extra cost against both.

    python python/benches/overhead.py [--sites 47] [--rounds 200] [--features 13] [--repeats 5]

Run it from the repository root with the package installed as a release
build (``pip install ./python``, maturin's default) on a quiet machine; it
runs the Rust side with ``cargo run --release``.
"""

import argparse
import json
import statistics
import subprocess

import numpy as np

import tessera

PLAN = """
name = "overhead-python"
seed = 1
[model]
kind = "external"
[training]
steps = 1
batch_size = 1
lr = 0.1
[federation]
rounds = {rounds}
min_participants = {sites}
"""


class NoWork(tessera.Client):
    """A client that does nothing: it hands the parameters back."""

    def __init__(self, shapes):
        self.shapes = shapes

    def get_parameters(self):
        return [np.zeros(shape, dtype=np.float32) for shape in self.shapes]

    def fit(self, parameters, config):
        return parameters, 3, {}

    def evaluate(self, parameters, config):
        return 0.5, 1, {"accuracy": 1.0}


def median_round(report):
    seconds = sorted(r["seconds"] for r in report["rounds"][1:])
    return seconds[len(seconds) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=47)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--features", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rust, python = [], []
    for _ in range(args.repeats):
        out = subprocess.run(
            ["cargo", "run", "--release", "-q", "-p", "tessera-sim", "--example",
             "external_overhead", "--", str(args.sites), str(args.rounds), str(args.features)],
            check=True, capture_output=True, text=True,
        ).stdout
        rust.append(json.loads(out.strip().splitlines()[-1]))
        shapes = [tuple(s) for s in rust[-1]["shapes"]]
        plan = PLAN.format(rounds=args.rounds, sites=args.sites)
        report = tessera.simulate(plan, lambda site: NoWork(shapes), sites=rust[-1]["site_names"])
        python.append(median_round(report))
    built_in = statistics.median(r["built_in_round_seconds"] for r in rust)
    rust_none = statistics.median(r["rust_no_work_round_seconds"] for r in rust)
    py_none = statistics.median(python)
    values = sum(int(np.prod(s)) for s in shapes)
    print(f"{args.sites} sites, {args.rounds} rounds, {values} parameters, "
          f"median of {args.repeats} runs' median round:")
    print(f"  built-in logistic (1 step, 1 row a site): {built_in * 1e3:8.3f} ms a round")
    print(f"  Rust external learner, no work:          {rust_none * 1e3:8.3f} ms a round")
    print(f"  Python client, no work:                  {py_none * 1e3:8.3f} ms a round")
    print(f"  Python client over built-in:             {(py_none - built_in) * 1e3:+8.3f} ms a round")
    print(f"  Python client over Rust no-work learner: {(py_none - rust_none) * 1e3:+8.3f} ms a round")
    print(f"  per Python call (fit + evaluate a site):  "
          f"{(py_none - rust_none) / (2 * args.sites) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
