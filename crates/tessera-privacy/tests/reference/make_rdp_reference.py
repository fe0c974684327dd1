"""Reference values for the RDP accountant of tessera-privacy.

Run once (not in CI) to regenerate rdp_reference.csv:

    pip install dp-accounting==0.6.0
    python3 crates/tessera-privacy/tests/reference/make_rdp_reference.py \
        > crates/tessera-privacy/tests/reference/rdp_reference.csv

Each row: Poisson sampling rate q, noise multiplier sigma, number of
compositions, delta, and the epsilon that Google's dp_accounting
RdpAccountant (default orders) reports for the Poisson-subsampled Gaussian
mechanism composed that many times.
"""
import itertools

import dp_accounting
from dp_accounting import rdp

print("q,sigma,steps,delta,epsilon")
for q, sigma, steps, delta in itertools.product(
    [0.001, 0.01, 0.05, 0.2, 0.5, 1.0],
    [0.7, 1.0, 1.5, 3.0, 10.0],
    [1, 10, 100, 1000, 10000],
    [1e-3, 1e-5, 1e-7],
):
    accountant = rdp.RdpAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
        steps,
    )
    accountant.compose(event)
    eps = accountant.get_epsilon(delta)
    print(f"{q!r},{sigma!r},{steps},{delta!r},{float(eps)!r}")
