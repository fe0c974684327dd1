"""tessera.continual: elastic weight consolidation for a site's own (here
numpy) model. A federation of softmax-regression clients trains on one
population, then continues on a shifted one; with each site's own
importance held by Elastic, the earlier population is forgotten less than
half as much as under plain continued training. The pieces are checked
against independent computations, and bad input is refused naming what
was wrong."""

import numpy as np
import pytest

import tessera
from tessera.continual import Elastic, fisher_diagonal

FEATURES, CLASSES, SITES = 8, 3, ["s1", "s2", "s3", "s4"]

PLAN = """
name = "continual-numpy"
seed = 5
[data]
path = "rows.csv"      # not read: every client holds its own rows
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"      # not used: the clients are the model
[training]
epochs = 2
batch_size = 16
lr = 0.2
[federation]
rounds = 15
strategy = "fedavg"
"""


def population(seed, later):
    """Each site's (train x, train y, test x, test y). The earlier
    population's labels follow a linear rule of the first half of the
    features (the second half barely varies: a measurement added later);
    the later population's follow another rule of the second half, the
    first half as varied as before: a model of both exists, and plain
    training on the later rows unlearns the first half's weights. Each site
    tilts its population's rule a little."""
    rng = np.random.default_rng(seed)
    half = FEATURES // 2
    rule = rng.normal(size=(half, CLASSES)) * 2.0
    sites = {}
    for site in SITES:
        tilt = rule + rng.normal(size=rule.shape) * 0.3
        x = rng.normal(size=(200, FEATURES))
        if later:
            y = np.argmax(x[:, half:] @ tilt, axis=1)
        else:
            x[:, half:] *= 0.05
            y = np.argmax(x[:, :half] @ tilt, axis=1)
        sites[site] = (x[:150], y[:150], x[150:], y[150:])
    return sites


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gradients(parameters, x, y):
    """Mean gradient of the cross-entropy of a softmax regression."""
    w, b = parameters
    p = softmax(x @ w + b)
    p[np.arange(len(y)), y] -= 1.0
    return [x.T @ p / len(y), p.mean(axis=0)]


def accuracy(parameters, x, y):
    w, b = parameters
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


class Softmax(tessera.Client):
    """A softmax regression trained by minibatch SGD on the site's rows,
    pulled toward an earlier model by `elastic` when given."""

    def __init__(self, rows, start, elastic=None):
        self.x, self.y, self.test_x, self.test_y = rows
        self.start = start
        self.elastic = elastic
        self.rng = np.random.default_rng(len(self.y))

    def get_parameters(self):
        return [a.copy() for a in self.start]

    def fit(self, parameters, config):
        if self.elastic is not None and config["round"] == 1:
            self.elastic.check_start(parameters)
        w, b = (np.array(a, dtype=np.float64) for a in parameters)
        for _ in range(config["local_epochs"]):
            order = self.rng.permutation(len(self.y))
            for i in range(0, len(order), config["batch_size"]):
                rows = order[i : i + config["batch_size"]]
                gw, gb = gradients([w, b], self.x[rows], self.y[rows])
                if self.elastic is not None:
                    ew, eb = self.elastic.gradient([w, b])
                    gw, gb = gw + ew, gb + eb
                w -= config["lr"] * gw
                b -= config["lr"] * gb
        return [w, b], len(self.y), {}

    def evaluate(self, parameters, config):
        return 0.0, len(self.test_y), {"accuracy": accuracy(parameters, self.test_x, self.test_y)}

    def importance(self, parameters):
        """This site's own importance of `parameters`, on its training rows."""
        per_example = (
            gradients(parameters, self.x[i : i + 1], self.y[i : i + 1]) for i in range(len(self.y))
        )
        return fisher_diagonal(per_example)


def federate(data, start, elastic=None):
    """The plan's run over `data`'s sites from `start`; (final model, clients)."""
    clients = {s: Softmax(data[s], start, None if elastic is None else elastic[s]) for s in SITES}
    report = tessera.simulate(PLAN, lambda site: clients[site], sites=SITES)
    return report["parameters"], clients


def pooled_accuracy(parameters, data):
    x = np.concatenate([data[s][2] for s in SITES])
    y = np.concatenate([data[s][3] for s in SITES])
    return accuracy(parameters, x, y)


def test_each_sites_own_importance_forgets_less_than_half_of_plain_continued_training(tmp_path):
    zero = [np.zeros((FEATURES, CLASSES)), np.zeros(CLASSES)]
    plain_drops, ewc_drops = [], []
    for seed in (1, 2, 3):
        earlier, later = population(seed, False), population(seed + 100, True)
        before, clients = federate(earlier, zero)
        # Each site keeps the final model and its own importance, and
        # starts the next run from it (save and load, as between runs).
        held = {}
        for site, client in clients.items():
            path = tmp_path / f"{seed}-{site}.npz"
            Elastic(before, client.importance(before), 0.0).save(path)
            held[site] = Elastic.load(path, lam=3.0)
        plain, _ = federate(later, before)
        ewc, _ = federate(later, before, held)
        # Lambda 0 is plain continued training, bit for bit.
        free = {s: Elastic(e.anchor, e.importance, 0.0) for s, e in held.items()}
        for a, b in zip(federate(later, before, free)[0], plain):
            assert a.tobytes() == b.tobytes()
        start = pooled_accuracy(before, earlier)
        plain_drop = start - pooled_accuracy(plain, earlier)
        ewc_drop = start - pooled_accuracy(ewc, earlier)
        new_plain, new_ewc = pooled_accuracy(plain, later), pooled_accuracy(ewc, later)
        print(
            f"seed {seed}: earlier {start:.4f}; plain forgets {plain_drop:.4f} (new "
            f"{new_plain:.4f}), EWC {ewc_drop:.4f} (new {new_ewc:.4f}); new data before "
            f"{pooled_accuracy(before, later):.4f}"
        )
        # EWC still learned the new population.
        assert new_ewc > pooled_accuracy(before, later) + 0.2, seed
        plain_drops.append(plain_drop)
        ewc_drops.append(ewc_drop)
    assert np.mean(plain_drops) > 0.15, plain_drops
    assert np.mean(ewc_drops) < np.mean(plain_drops) / 2, (ewc_drops, plain_drops)


def test_the_pieces_match_an_independent_computation():
    rng = np.random.default_rng(4)
    g = [[rng.normal(size=(2, 3)), rng.normal(size=3)] for _ in range(5)]
    f = fisher_diagonal(g)
    squares = [sum(e[k] ** 2 for e in g) / 5 for k in range(2)]
    largest = max(s.max() for s in squares)
    for got, want in zip(f, squares):
        np.testing.assert_allclose(got, want / largest, rtol=1e-12)
    assert max(a.max() for a in f) == 1.0
    anchor = [rng.normal(size=(2, 3)), rng.normal(size=3)]
    theta = [a + rng.normal(size=a.shape) for a in anchor]
    e = Elastic(anchor, f, 2.5)
    want = 0.5 * 2.5 * sum(float(np.sum(fi * (t - a) ** 2)) for t, a, fi in zip(theta, anchor, f))
    assert e.penalty(theta) == pytest.approx(want, rel=1e-12)
    # The gradient is the penalty's: a central difference agrees.
    step = 1e-6
    for k, (t, grad) in enumerate(zip(theta, e.gradient(theta))):
        for i in np.ndindex(t.shape):
            up = [x.copy() for x in theta]
            down = [x.copy() for x in theta]
            up[k][i] += step
            down[k][i] -= step
            numeric = (e.penalty(up) - e.penalty(down)) / (2 * step)
            assert numeric == pytest.approx(grad[i], rel=1e-5, abs=1e-8)
    # Lambda 0 pulls nothing: plain continued training.
    assert all(not np.any(x) for x in Elastic(anchor, f, 0.0).gradient(theta))
    e.check_start([a.copy() for a in anchor])


def test_bad_input_is_refused_naming_what_was_wrong(tmp_path):
    anchor = [np.zeros((2, 3)), np.zeros(3)]
    ones = [np.ones((2, 3)), np.ones(3)]
    cases = [
        (lambda: fisher_diagonal([]), "no example"),
        (lambda: fisher_diagonal([[np.zeros(2)]]), "every gradient is zero"),
        (lambda: fisher_diagonal([[np.ones(2)], [np.ones(3)]]), "example 1's gradient: array 0"),
        (lambda: fisher_diagonal([[np.array([np.nan])]]), "not finite"),
        (lambda: Elastic(anchor, [np.ones((2, 3))], 1.0), "importance: 1 arrays"),
        (lambda: Elastic(anchor, [-a for a in ones], 1.0), "negative"),
        (lambda: Elastic(anchor, ones, -1.0), "at least 0"),
        (lambda: Elastic(anchor, ones, float("nan")), "finite number"),
        (lambda: Elastic(anchor, ones, 1.0).gradient([np.zeros((3, 2)), np.zeros(3)]), "shape"),
        (lambda: Elastic(anchor, ones, 1.0).check_start(ones), "did not start from"),
        (lambda: Elastic(anchor, [["x"]], 1.0), "array 0 is not real numbers"),
        (lambda: Elastic(anchor, [np.ones((2, 3)) * 1j, np.ones(3)], 1.0), "not real numbers"),
        (lambda: Elastic(np.zeros((2, 3)), ones, 1.0), "a list of arrays, not a ndarray"),
        (lambda: Elastic(anchor, ones, "3"), "a number, not '3'"),
        (lambda: fisher_diagonal([[np.array([1e200])]]), "not a finite number"),
        (lambda: fisher_diagonal([[np.zeros(0)]]), "every gradient is zero"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # Files that save() does not write.
    files = {
        "other": {"weights": np.zeros(2)},
        "empty": {},
        "unpaired": {"anchor_0": np.zeros(2), "importance_1": np.zeros(2)},
        "extra": {"anchor_0": np.zeros(2), "importance_0": np.zeros(2), "x": np.zeros(1)},
    }
    for name, arrays in files.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match="not an Elastic file"):
            Elastic.load(path, 1.0)
    np.save(tmp_path / "one.npy", np.zeros(2))
    with pytest.raises(ValueError, match="a single array"):
        Elastic.load(tmp_path / "one.npy", 1.0)
    np.savez(tmp_path / "objects.npz", anchor_0=np.array([None, 1]), importance_0=np.zeros(2))
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        Elastic.load(tmp_path / "objects.npz", 1.0)
    np.savez(tmp_path / "shapes.npz", anchor_0=np.zeros(2), importance_0=np.zeros(3))
    with pytest.raises(ValueError, match="importance: array 0 has shape"):
        Elastic.load(tmp_path / "shapes.npz", 1.0)
    big = tmp_path / "big.npz"
    Elastic(anchor, ones, 1.0).save(big)
    with pytest.raises(ValueError, match="18 values, more than max_values 17"):
        Elastic.load(big, 1.0, max_values=17)
    # What save() writes reads back.
    back = Elastic.load(big, 2.0)
    assert back.lam == 2.0 and all(np.array_equal(a, b) for a, b in zip(back.importance, ones))
    # check_start compares as Tessera carries models: 32-bit floats.
    wide = [np.full((2, 3), 0.1), np.full(3, 0.1)]
    Elastic(wide, ones, 1.0).check_start([a.astype(np.float32) for a in wide])
