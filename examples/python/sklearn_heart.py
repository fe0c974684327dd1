"""Fed-Heart-Disease with a scikit-learn model: an ``SGDClassifier`` (log
loss, trained with ``partial_fit``) at each of the four hospitals, federated
by Tessera's simulator with the plan ``examples/fed-heart-disease.toml``
(FedAvg, 15 rounds, 100 steps of 4 rows a round, lr 0.001).

Each client reads its hospital's rows itself, with the plan's preparation:
the FLamby split (``flamby_split.csv``), rows with a missing value dropped,
``cp`` and ``restecg`` one-hot with their first level dropped, ``slope``,
``ca`` and ``thal`` ignored, the label ``num > 0``, and every feature
standardised with the site's training mean and standard deviation
(ddof 1, + 1e-9).

    pip install ./python scikit-learn
    python examples/python/sklearn_heart.py

Deployed, one process per hospital against a coordinator running
``examples/python/fed-heart-disease.toml`` (the same rounds, the model
external):

    python examples/python/sklearn_heart.py --coordinator http://127.0.0.1:7000 --site cleveland
"""

import argparse
import csv
import os
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss, roc_auc_score

import tessera

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data", "uci-heart-disease")
PLAN = os.path.join(ROOT, "examples", "fed-heart-disease.toml")
DEPLOY_PLAN = os.path.join(ROOT, "examples", "python", "fed-heart-disease.toml")
SITES = ["cleveland", "hungarian", "switzerland", "va"]

# The raw columns, in file order, and what the plan makes of each.
COLUMNS = [
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
]
IGNORED = {"slope", "ca", "thal"}
# Categorical columns: their levels after the dropped first one.
ONE_HOT = {"cp": [2.0, 3.0, 4.0], "restecg": [1.0, 2.0]}


def split_of(site):
    """row_in_file -> train / test / dropped, for one site (FLamby's split)."""
    split = {}
    with open(os.path.join(DATA, "flamby_split.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["center"] == site:
                split[int(row["row_in_file"])] = row["flamby_split"]
    return split


def encode(values):
    """One raw row as the plan's features, or None when a kept value is missing."""
    row = dict(zip(COLUMNS, values))
    if any(row[c].strip() == "?" for c in COLUMNS if c not in IGNORED):
        return None
    features = []
    for column in COLUMNS[:-1]:
        if column in IGNORED:
            continue
        value = float(row[column])
        if column in ONE_HOT:
            features.extend(1.0 if value == level else 0.0 for level in ONE_HOT[column])
        else:
            features.append(value)
    return features, int(float(row["num"]) > 0)


def load(site):
    """The site's standardised (x_train, y_train, x_test, y_test)."""
    split = split_of(site)
    rows = {"train": ([], []), "test": ([], [])}
    with open(os.path.join(DATA, f"processed.{site}.data"), newline="") as f:
        for i, values in enumerate(csv.reader(f)):
            part = split.get(i, "dropped")
            encoded = encode(values)
            if part == "dropped" or encoded is None:
                continue
            rows[part][0].append(encoded[0])
            rows[part][1].append(encoded[1])
    x_train, y_train = (np.array(v, dtype=np.float64) for v in rows["train"])
    x_test, y_test = (np.array(v, dtype=np.float64) for v in rows["test"])
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0, ddof=1)
    scale = np.where(std > 0, std + 1e-9, 1.0)
    return (x_train - mean) / scale, y_train.astype(int), (x_test - mean) / scale, y_test.astype(int)


class HeartClient(tessera.Client):
    """One hospital: a log-loss SGDClassifier on its own rows."""

    def __init__(self, site, seed=0):
        self.x_train, self.y_train, self.x_test, self.y_test = load(site)
        self.rng = np.random.default_rng([seed, sum(site.encode())])
        self.model = SGDClassifier(
            loss="log_loss", penalty=None, learning_rate="constant", eta0=0.001
        )
        n_features = self.x_train.shape[1]
        # Start from zeros, as Tessera's logistic regression does.
        self.model.classes_ = np.array([0, 1])
        self.model.coef_ = np.zeros((1, n_features))
        self.model.intercept_ = np.zeros(1)

    def get_parameters(self):
        return [self.model.coef_, self.model.intercept_]

    def set_parameters(self, parameters):
        self.model.coef_ = np.array(parameters[0], dtype=np.float64, order="C")
        self.model.intercept_ = np.array(parameters[1], dtype=np.float64)

    def fit(self, parameters, config):
        """``local_steps`` batches of ``batch_size`` rows, each a partial_fit
        (one pass over the batch at learning rate ``lr``)."""
        self.set_parameters(parameters)
        self.model.set_params(eta0=config["lr"])
        n = len(self.y_train)
        batch = config["batch_size"]
        steps = config["local_steps"] or (config["local_epochs"] or 1) * -(-n // batch)
        order = self.rng.permutation(n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for step in range(steps):
                start = (step * batch) % n
                if start < batch and step > 0:
                    order = self.rng.permutation(n)
                rows = order[start:start + batch]
                self.model.partial_fit(self.x_train[rows], self.y_train[rows], classes=[0, 1])
        return self.get_parameters(), n, {"n_steps": steps}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        proba = self.model.predict_proba(self.x_test)
        accuracy = float((proba.argmax(axis=1) == self.y_test).mean())
        metrics = {"accuracy": accuracy}
        if len(set(self.y_test)) == 2:
            metrics["auc"] = float(roc_auc_score(self.y_test, proba[:, 1]))
        loss = log_loss(self.y_test, proba, labels=[0, 1])
        return loss, len(self.y_test), metrics


def run(plan=PLAN, seed=0, sites=None):
    """The federated run's report (a dict)."""
    return tessera.simulate(plan, lambda site: HeartClient(site, seed), sites=sites)


def take_part(coordinator, site, seed=0, tls=None):
    """One hospital in a deployed run of DEPLOY_PLAN: its results, and the
    final global model's accuracy on its own test rows."""
    client = HeartClient(site, seed)
    result = tessera.run_participant(
        client,
        coordinator,
        site,
        train_rows=len(client.y_train),
        test_rows=len(client.y_test),
        tls=tls,
        expect_plan=DEPLOY_PLAN,
    )
    accuracy = None
    if result["parameters"] is not None:
        _, _, metrics = client.evaluate(result["parameters"], {})
        accuracy = metrics["accuracy"]
    return result, accuracy, len(client.y_test)


def main():
    parser = argparse.ArgumentParser(description="Fed-Heart-Disease with scikit-learn clients")
    parser.add_argument("--coordinator", help="join this coordinator's run (one hospital)")
    parser.add_argument("--site", choices=SITES, help="the hospital, with --coordinator")
    parser.add_argument("--tls", help="the site's certificate folder (tessera ca issue --site)")
    args = parser.parse_args()
    if args.coordinator:
        if not args.site:
            parser.error("--coordinator needs --site")
        result, accuracy, n_test = take_part(args.coordinator, args.site, tls=args.tls)
        shown = "not evaluated" if accuracy is None else f"{accuracy:.4f}"
        print(
            f"site '{args.site}': run {result['run_id']}, {result['updates_accepted']} updates "
            f"accepted; the global model (round {result['round']}) on its {n_test} test rows: "
            f"accuracy {shown}"
        )
        return 0
    report = run()
    final = report["final"]
    for record in report["rounds"]:
        print(f"round {record['round']:2}: accuracy {record['accuracy']:.4f}, loss {record['loss']:.4f}")
    print(f"final: accuracy {final['accuracy']:.4f} on {report['rounds'][-1]['n_test']} test rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
