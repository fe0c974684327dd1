"""Flower's NumPyClient, unchanged, through tessera.flower: the same bits as
the same model written as a tessera.Client, FedProx's proximal_mu in the
config under Flower's name, and SCAFFOLD refused with the reason.

The client subclasses flwr.client.NumPyClient when Flower is installed
(.ci/run installs it and sets TESSERA_REQUIRE_FLWR=1, so that a missing
Flower fails there); elsewhere a class of the same shape stands in."""

import os

import numpy as np
import pytest

import tessera
import tessera.flower

try:
    from flwr.client import NumPyClient

    HAVE_FLOWER = True
except ImportError:  # the same shape, for a machine without Flower
    if os.environ.get("TESSERA_REQUIRE_FLWR"):
        raise

    class NumPyClient:
        def get_parameters(self, config):
            raise NotImplementedError

    HAVE_FLOWER = False

PLAN = """
name = "flower-clients"
seed = 11
[data]
path = "rows.csv"      # not read: every client holds its own rows
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"      # not used: the clients are the model
[training]
steps = 5
batch_size = 16
lr = 0.5
[federation]
rounds = 8
strategy = "{strategy}"
[strategies.fedprox]
mu = 0.25
"""

SITES = ["north", "south", "east", "west"]


def rows(site, n, seed):
    """A site's rows: two features, labels from a fixed line, shifted per site."""
    rng = np.random.default_rng([seed, SITES.index(site)])
    x = rng.normal(size=(n, 2)) + 0.3 * SITES.index(site)
    y = (x @ np.array([1.5, -2.0]) + 0.2 > 0).astype(np.float64)
    return x, y


def logistic_step(w, b, x, y, lr, mu=0.0, w0=None, b0=None):
    """One full-batch gradient step of logistic regression (with FedProx's pull)."""
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    gw = x.T @ (p - y) / len(y)
    gb = np.array([np.mean(p - y)])
    if mu:
        gw = gw + mu * (w - w0)
        gb = gb + mu * (b - b0)
    return w - lr * gw, b - lr * gb


def metrics(w, b, x, y):
    p = np.clip(1.0 / (1.0 + np.exp(-(x @ w + b))), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return loss, float(np.mean((p >= 0.5) == (y == 1)))


class FlowerLogistic(NumPyClient):
    """Flower's quickstart shape: get_parameters(config), fit, evaluate."""

    def __init__(self, site):
        self.x, self.y = rows(site, 60, 1)
        self.x_test, self.y_test = rows(site, 40, 2)
        self.configs = []

    def get_parameters(self, config):
        return [np.zeros(2), np.zeros(1)]

    def fit(self, parameters, config):
        self.configs.append(dict(config))
        w0, b0 = (np.asarray(p, dtype=np.float64) for p in parameters)
        w, b = w0.copy(), b0.copy()
        mu = float(config.get("proximal_mu", 0.0))
        for _ in range(int(config["local_steps"])):
            w, b = logistic_step(w, b, self.x, self.y, float(config["lr"]), mu, w0, b0)
        return [w, b], len(self.y), {"loss": metrics(w, b, self.x, self.y)[0], "note": "ok"}

    def evaluate(self, parameters, config):
        loss, accuracy = metrics(*parameters, self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": accuracy}


class TesseraLogistic(tessera.Client):
    """The same model written for Tessera."""

    def __init__(self, site):
        self.flower = FlowerLogistic(site)

    def get_parameters(self):
        return [np.zeros(2), np.zeros(1)]

    def fit(self, parameters, config):
        new, n, _ = self.flower.fit(parameters, config)
        return new, n, {}

    def evaluate(self, parameters, config):
        return self.flower.evaluate(parameters, config)


def test_a_flower_client_runs_unchanged_and_equals_the_same_tessera_client():
    plan = PLAN.format(strategy="fedavg")
    flower = tessera.flower.simulate(plan, FlowerLogistic, sites=SITES)
    native = tessera.simulate(plan, TesseraLogistic, sites=SITES)
    for a, b in zip(flower["parameters"], native["parameters"]):
        np.testing.assert_array_equal(a, b)
    assert flower["final"]["accuracy"] == native["final"]["accuracy"]
    assert flower["final"]["accuracy"] > 0.8, flower["final"]
    assert len(flower["rounds"]) == 8
    assert all(r["accepted"] == 4 for r in flower["rounds"])


def test_flower_clients_get_scalar_configs_with_fedprox_under_its_flower_name():
    clients = {}

    def client_fn(site):
        clients[site] = FlowerLogistic(site)
        return clients[site]

    report = tessera.flower.simulate(PLAN.format(strategy="fedprox"), client_fn, sites=SITES)
    assert all(r["accepted"] == 4 for r in report["rounds"])
    config = clients["north"].configs[0]
    assert config["proximal_mu"] == pytest.approx(0.25)
    assert config["round"] == 1
    assert "correction" not in config
    for value in config.values():
        assert isinstance(value, (bool, int, float, str, bytes)), config


def test_a_strategy_a_flower_client_cannot_follow_is_refused_with_the_reason():
    plan = PLAN.format(strategy="scaffold")
    report = tessera.flower.simulate(plan, FlowerLogistic, sites=SITES)
    errors = [e for r in report["rounds"] for e in r.get("site_errors", [])]
    assert errors, report["rounds"][0]
    assert all("correction term" in e for e in errors), errors
    assert all(r["accepted"] == 0 for r in report["rounds"])


@pytest.mark.skipif(not HAVE_FLOWER, reason="Flower is not installed")
def test_a_flower_client_made_with_to_client_is_unwrapped():
    plan = PLAN.format(strategy="fedavg")
    wrapped = tessera.flower.simulate(plan, lambda s: FlowerLogistic(s).to_client(), sites=SITES)
    plain = tessera.flower.simulate(plan, FlowerLogistic, sites=SITES)
    for a, b in zip(wrapped["parameters"], plain["parameters"]):
        np.testing.assert_array_equal(a, b)


def test_something_that_is_not_a_flower_client_is_refused():
    with pytest.raises(TypeError, match="not a Flower NumPyClient"):
        tessera.flower.FlowerClient(object())
