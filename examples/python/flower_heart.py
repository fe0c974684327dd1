"""Fed-Heart-Disease with a Flower client, unchanged: a
``flwr.client.NumPyClient`` of Flower's quickstart shape (numpy logistic
regression, ``get_parameters`` / ``fit`` / ``evaluate``) at each of the four
hospitals, launched by Tessera instead of Flower. Only the launcher changes:
``tessera.flower.simulate`` (or ``tessera.flower.run`` against a deployed
coordinator) in place of Flower's ``start_client`` or simulation.

The plan is ``examples/fed-heart-disease.toml`` (FedAvg, 15 rounds, 100
steps of 4 rows a round, lr 0.001); each client reads its hospital's rows as
``examples/python/sklearn_heart.py`` does.

    pip install ./python scikit-learn flwr
    python examples/python/flower_heart.py

Deployed, one process per hospital against a coordinator running
``examples/python/fed-heart-disease.toml``:

    python examples/python/flower_heart.py --coordinator http://127.0.0.1:7000 --site cleveland
"""

import argparse
import os
import sys

import numpy as np
from flwr.client import NumPyClient

import tessera.flower

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sklearn_heart import DEPLOY_PLAN, PLAN, SITES, load  # noqa: E402


class HeartFlowerClient(NumPyClient):
    """A Flower NumPyClient, as a Flower user writes it: nothing here
    knows about Tessera."""

    def __init__(self, site, seed=0):
        self.x_train, self.y_train, self.x_test, self.y_test = load(site)
        self.rng = np.random.default_rng([seed, sum(site.encode())])
        self.w = np.zeros(self.x_train.shape[1])
        self.b = np.zeros(1)

    def get_parameters(self, config):
        return [self.w, self.b]

    def _set(self, parameters):
        self.w = np.array(parameters[0], dtype=np.float64).reshape(-1)
        self.b = np.array(parameters[1], dtype=np.float64).reshape(1)

    def _proba(self, x):
        return 1.0 / (1.0 + np.exp(-(x @ self.w + self.b[0])))

    def fit(self, parameters, config):
        self._set(parameters)
        lr = float(config.get("lr", 0.001))
        batch = int(config.get("batch_size", 4))
        n = len(self.y_train)
        steps = int(config.get("local_steps") or -(-n // batch))
        order = self.rng.permutation(n)
        for step in range(steps):
            start = (step * batch) % n
            if start < batch and step > 0:
                order = self.rng.permutation(n)
            rows = order[start:start + batch]
            x, y = self.x_train[rows], self.y_train[rows]
            err = self._proba(x) - y
            self.w -= lr * x.T @ err / len(rows)
            self.b -= lr * err.mean(keepdims=True)
        return [self.w, self.b.reshape(1)], n, {"n_steps": steps}

    def evaluate(self, parameters, config):
        self._set(parameters)
        p = np.clip(self._proba(self.x_test), 1e-12, 1 - 1e-12)
        y = self.y_test
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        accuracy = float(((p > 0.5) == (y == 1)).mean())
        return loss, len(y), {"accuracy": accuracy}


def run(plan=PLAN, seed=0):
    """The federated run's report (a dict)."""
    return tessera.flower.simulate(plan, lambda site: HeartFlowerClient(site, seed), sites=SITES)


def main():
    parser = argparse.ArgumentParser(description="Fed-Heart-Disease with Flower clients")
    parser.add_argument("--coordinator", help="join this coordinator's run (one hospital)")
    parser.add_argument("--site", choices=SITES, help="the hospital, with --coordinator")
    parser.add_argument("--tls", help="the site's certificate folder (tessera ca issue --site)")
    args = parser.parse_args()
    if args.coordinator:
        if not args.site:
            parser.error("--coordinator needs --site")
        client = HeartFlowerClient(args.site)
        result = tessera.flower.run(
            client, args.coordinator, args.site,
            train_rows=len(client.y_train), test_rows=len(client.y_test),
            tls=args.tls, expect_plan=DEPLOY_PLAN,
        )
        print(f"site '{args.site}': run {result['run_id']}, {result['updates_accepted']} "
              f"updates accepted, final model of round {result['round']}")
        return 0
    report = run()
    for record in report["rounds"]:
        print(f"round {record['round']:2}: accuracy {record['accuracy']:.4f}, loss {record['loss']:.4f}")
    print(f"final: accuracy {report['final']['accuracy']:.4f} on "
          f"{report['rounds'][-1]['n_test']} test rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
