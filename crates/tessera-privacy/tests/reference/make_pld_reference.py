"""Reference values for the PLD accountant of tessera-privacy.

Run once (not in CI) to regenerate pld_reference.csv and
pld_mixed_reference.csv:

    pip install dp-accounting==0.6.0
    python3 crates/tessera-privacy/tests/reference/make_pld_reference.py grid \
        > crates/tessera-privacy/tests/reference/pld_reference.csv
    python3 crates/tessera-privacy/tests/reference/make_pld_reference.py mixed \
        > crates/tessera-privacy/tests/reference/pld_mixed_reference.csv

grid: each row is a Poisson sampling rate q, noise multiplier sigma, number of
compositions, delta, and the epsilon that Google's dp_accounting PLDAccountant
(defaults: add-or-remove-one, value_discretization_interval 1e-4, pessimistic
connect-the-dots) reports for the Poisson-subsampled Gaussian mechanism
composed that many times. Every cell of the grid took dp_accounting under six
seconds, so none is dropped.

mixed: each row is a sequence of such events composed one after another into
one accountant (`q:sigma:steps` separated by `;`), delta, and the epsilon.
"""
import itertools
import sys

import dp_accounting
from dp_accounting import pld


def event(q, sigma, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
        steps,
    )


def grid():
    print("q,sigma,steps,delta,epsilon")
    for q, sigma, steps in itertools.product(
        [0.01, 0.05, 0.2, 1.0],
        [0.8, 1.0, 2.0, 5.79],
        [1, 15, 100, 1000],
    ):
        accountant = pld.PLDAccountant()
        accountant.compose(event(q, sigma, steps))
        for delta in [1e-5, 1e-7]:
            eps = accountant.get_epsilon(delta)
            print(f"{q!r},{sigma!r},{steps},{delta!r},{float(eps)!r}")


MIXED = [
    [(0.01, 1.0, 100), (1.0, 5.79, 15)],
    [(1.0, 2.0, 1), (1.0, 5.79, 15), (0.05, 1.0, 100)],
    [(0.2, 2.0, 15), (0.2, 2.0, 15)],
    [(0.05, 0.8, 10), (0.01, 5.79, 1000)],
    [(1.0, 5.79, 1)] * 15,
]


def mixed():
    print("events,delta,epsilon")
    for events in MIXED:
        accountant = pld.PLDAccountant()
        for q, sigma, steps in events:
            accountant.compose(event(q, sigma, steps))
        name = ";".join(f"{q!r}:{sigma!r}:{steps}" for q, sigma, steps in events)
        for delta in [1e-5, 1e-7]:
            eps = accountant.get_epsilon(delta)
            print(f"{name},{delta!r},{float(eps)!r}")


if __name__ == "__main__":
    {"grid": grid, "mixed": mixed}[sys.argv[1]]()
