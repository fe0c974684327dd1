"""Local DP with Python clients: the client runs DP-SGD itself with the
numbers its site hands it in ``config`` (noise multiplier, clipping norm,
sampling rate, step bound, a seed from the site's secret key) and reports
its steps; Tessera's Rust site accounts each training as for a built-in
model, refuses a report that would understate the spend, and gives the
site its epsilon, in simulation and deployment."""

import math
import os

import numpy as np
import pytest

import tessera

PLAN = """
name = "python-local-dp"
seed = 11
[model]
kind = "external"
[training]
epochs = 2
batch_size = 16
lr = 0.5
[federation]
rounds = {rounds}
strategy = "fedavg"
min_participants = 3
[privacy]
mode = "local"
noise_multiplier = 1.0
clip_norm = 1.0
"""

# site -> (training rows, test rows, data seed)
SITES = {"north": (240, 80, 1), "south": (160, 80, 2), "west": (320, 80, 3)}
TRUE_W = np.array([1.5, -2.0, 1.0, 0.0])


def rows(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, TRUE_W.size))
    y = (x @ TRUE_W + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


class DpLogistic(tessera.Client):
    """Logistic regression trained with DP-SGD in numpy: Poisson batches,
    per-example clipping, Gaussian noise on the sum, as ``config`` says."""

    def __init__(self, site, report_steps=True):
        n_train, n_test, seed = SITES[site]
        self.x, self.y = rows(seed, n_train)
        self.x_test, self.y_test = rows(100 + seed, n_test)
        self.report_steps = report_steps
        self.configs = []

    def get_parameters(self):
        return [np.zeros(TRUE_W.size), np.zeros(1)]

    def fit(self, parameters, config):
        self.configs.append(dict(config))
        w, b = (np.array(p, dtype=np.float64) for p in parameters)
        rng = np.random.default_rng(config["dp_seed"])
        q, clip = config["dp_sampling_rate"], config["dp_clip_norm"]
        sigma = config["dp_noise_multiplier"] * clip
        n = len(self.y)
        steps = config["dp_max_steps"]
        for _ in range(steps):
            batch = rng.random(n) < q
            x, y = self.x[batch], self.y[batch]
            err = 1 / (1 + np.exp(-(x @ w + b[0]))) - y
            grads = np.hstack([err[:, None] * x, err[:, None]])
            norms = np.maximum(np.linalg.norm(grads, axis=1), 1e-12)
            grads *= np.minimum(1.0, clip / norms)[:, None]
            noisy = grads.sum(axis=0) + rng.normal(0.0, sigma, size=grads.shape[1])
            step = config["lr"] * noisy / (q * n)
            w -= step[:-1]
            b -= step[-1:]
        metrics = {"n_steps": steps} if self.report_steps else {}
        return [w, b], n, metrics

    def evaluate(self, parameters, config):
        w, b = parameters
        p = 1 / (1 + np.exp(-(self.x_test @ w + b[0])))
        eps = 1e-7
        loss = -np.mean(self.y_test * np.log(p + eps) + (1 - self.y_test) * np.log(1 - p + eps))
        accuracy = np.mean((p > 0.5) == (self.y_test > 0.5))
        return float(loss), len(self.y_test), {"accuracy": float(accuracy)}


def simulate(rounds=4, make=DpLogistic, train_rows=None):
    clients = {}

    def client_fn(site):
        clients[site] = make(site)
        return clients[site]

    if train_rows is None:
        train_rows = {s: v[0] for s, v in SITES.items()}
    report = tessera.simulate(PLAN.format(rounds=rounds), client_fn, sites=list(SITES),
                              train_rows=train_rows)
    return report, clients


def test_a_dp_sgd_client_gets_its_sites_dp_settings_and_is_accounted():
    report, clients = simulate()
    for site, client in clients.items():
        n = SITES[site][0]
        assert len(client.configs) == 4
        for config in client.configs:
            assert config["dp_noise_multiplier"] == 1.0
            assert config["dp_clip_norm"] == 1.0
            assert config["dp_sampling_rate"] == pytest.approx(16 / n)
            assert config["dp_max_steps"] == 2 * math.ceil(n / 16)
        seeds = [c["dp_seed"] for c in client.configs]
        assert len(set(seeds)) == 4, seeds
    # Seeds come from each site's own key: no two sites share one.
    all_seeds = [c["dp_seed"] for client in clients.values() for c in client.configs]
    assert len(set(all_seeds)) == len(all_seeds)
    privacy = report["privacy"]
    assert privacy["mode"] == "local"
    assert 0 < privacy["epsilon"] < math.inf
    assert set(privacy["site_noise_multipliers"]) == set(SITES)
    # The smallest site samples the most of its rows a step, so spends the most;
    # the run's epsilon is the largest site's spend, and more rounds spend more.
    longer, _ = simulate(rounds=8)
    assert longer["privacy"]["epsilon"] > privacy["epsilon"]
    # The noise is real, and the model still learns this easy task.
    assert report["final"]["accuracy"] > 0.8, report["final"]


def test_a_client_that_does_not_report_its_steps_leaves_every_round():
    report, _ = simulate(rounds=2, make=lambda s: DpLogistic(s, report_steps=s != "west"))
    for record in report["rounds"]:
        assert record["accepted"] == 2, record
        why = "\n".join(record["site_errors"])
        assert "west" in why and "n_steps" in why and "local DP" in why, why


def test_local_dp_needs_every_sites_training_rows():
    with pytest.raises(tessera.TesseraError, match="declare its training rows"):
        simulate(rounds=1, train_rows={"north": 240, "south": 160})


def test_deployed_dp_sgd_clients_report_what_their_sites_spent(tmp_path):
    from test_deploy import BINARY, deploy  # skips without the binary

    assert os.path.exists(BINARY)
    plan = PLAN.format(rounds=3)
    rows_of = {s: (v[0], v[1]) for s, v in SITES.items()}
    results = deploy(tmp_path, plan, {s: DpLogistic(s) for s in SITES}, rows_of)
    simulated, _ = simulate(rounds=3)
    for site, result in results.items():
        assert result["round"] == 3 and result["trainings"] == 3, result
        spent = result["privacy"]
        assert 0 < spent["delta"] < 1, spent
        # The site's own ledger counts what the simulation's accountant does
        # for that site's rows, noise and steps.
        assert 0 < spent["epsilon"] <= simulated["privacy"]["epsilon"] + 1e-9, spent
    smallest = min(SITES, key=lambda s: SITES[s][0])
    assert results[smallest]["privacy"]["epsilon"] == pytest.approx(
        simulated["privacy"]["epsilon"], rel=1e-9)
