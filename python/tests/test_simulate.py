"""tessera.simulate with numpy clients: results against an independent
computation, the strategy's instructions, and every bad return refused with
what was wrong."""

import numpy as np
import pytest

import tessera

PLAN = """
name = "numpy-clients"
seed = 7
[data]
path = "rows.csv"      # not read: every client holds its own rows
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"      # not used: the clients are the model
[training]
steps = 3
batch_size = 8
lr = 0.5
[federation]
rounds = 3
strategy = "fedavg"
"""

# name -> (start value, change a round per round number, train rows, test rows, accuracy)
SITES = {
    "c": (5.0, 0.5, 30, 10, 0.5),
    "a": (1.0, 0.125, 10, 20, 0.75),
    "b": (9.0, -0.25, 20, 30, 1.0),
}


class Known(tessera.Client):
    """Adds `step * round` to every parameter; reports fixed counts."""

    def __init__(self, site):
        self.start, self.step, self.n_train, self.n_test, self.accuracy = SITES[site]
        self.configs = []

    def get_parameters(self):
        return [np.full((2, 3), self.start), np.full(3, self.start)]

    def fit(self, parameters, config):
        self.configs.append(config)
        change = self.step * config["round"]
        return [p + change for p in parameters], self.n_train, {"loss": 0.1}

    def evaluate(self, parameters, config):
        return 0.25 * self.accuracy, self.n_test, {"accuracy": self.accuracy}


def run(plan=PLAN, make=Known, **kwargs):
    clients = {}

    def client_fn(site):
        clients[site] = make(site)
        return clients[site]

    report = tessera.simulate(plan, client_fn, sites=kwargs.pop("sites", list(SITES)), **kwargs)
    return report, clients


def test_fedavg_of_known_changes_matches_an_independent_computation():
    report, clients = run()
    # The first site by name ('a', 1.0) starts the model; each round adds
    # the example-weighted mean of the sites' changes.
    expected = 1.0
    for r in (1, 2, 3):
        total = sum(n * step * r for _, step, n, _, _ in SITES.values())
        expected += total / sum(n for _, _, n, _, _ in SITES.values())
    assert [p.shape for p in report["parameters"]] == [(2, 3), (3,)]
    for p in report["parameters"]:
        np.testing.assert_allclose(p, expected, rtol=0, atol=1e-5)
    # Evaluations pool over every test row.
    rows = sum(s[3] for s in SITES.values())
    right = sum(s[3] * s[4] for s in SITES.values())
    loss = sum(s[3] * 0.25 * s[4] for s in SITES.values())
    assert report["final"]["accuracy"] == pytest.approx(right / rows, abs=1e-12)
    assert report["final"]["loss"] == pytest.approx(loss / rows, abs=1e-12)
    assert [r["accepted"] for r in report["rounds"]] == [3, 3, 3]
    assert report["model"] == "external"
    # Each client saw every round, with the plan's training settings.
    config = clients["a"].configs[0]
    assert [c["round"] for c in clients["a"].configs] == [1, 2, 3]
    assert (config["strategy"], config["lr"], config["batch_size"]) == ("plain", 0.5, 8)
    assert (config["local_steps"], config["local_epochs"]) == (3, None)
    assert (config["proximal_mu"], config["correction"]) == (0.0, None)


def test_on_round_sees_every_round_as_it_closes():
    seen = []
    report, _ = run(on_round=seen.append)
    assert [r["round"] for r in seen] == [1, 2, 3]
    assert seen == report["rounds"]

    def fails(record):
        raise KeyError("progress bar")

    with pytest.raises(KeyError, match="progress bar"):
        run(on_round=fails)


def test_the_same_plan_and_clients_give_the_same_bits():
    first, _ = run()
    second, _ = run()
    for a, b in zip(first["parameters"], second["parameters"]):
        assert a.tobytes() == b.tobytes()


def test_fedprox_sends_mu_and_scaffold_its_correction():
    plan = PLAN.replace('strategy = "fedavg"', 'strategy = "fedprox"\n[strategies.fedprox]\nmu = 0.375')
    _, clients = run(plan)
    assert {c["proximal_mu"] for c in clients["b"].configs} == {0.375}
    assert {c["strategy"] for c in clients["b"].configs} == {"fedprox"}

    class Steps(Known):
        def fit(self, parameters, config):
            new, n, metrics = super().fit(parameters, config)
            return new, n, {"n_steps": 3}

    plan = PLAN.replace('strategy = "fedavg"', 'strategy = "scaffold"')
    report, clients = run(plan, Steps)
    corrections = [c["correction"] for c in clients["a"].configs]
    # Round 1: c = 0 and c_i = 0, so the correction is zero, shaped like the model.
    assert [x.shape for x in corrections[0]] == [(2, 3), (3,)]
    assert all(not x.any() for x in corrections[0])
    # Later rounds: c - c_i moves.
    assert any(x.any() for x in corrections[2])
    assert [r["accepted"] for r in report["rounds"]] == [3, 3, 3]


def test_a_plan_file_names_its_sites(tmp_path):
    path = tmp_path / "plan.toml"
    text = PLAN.replace('path = "rows.csv"      # not read: every client holds its own rows\nsite_column = "site"\n', "")
    text += "".join(f'[[data.sites]]\nname = "{s}"\npath = "{s}.csv"\n' for s in SITES)
    path.write_text(text)
    report, clients = run(str(path), sites=None)
    assert sorted(clients) == ["a", "b", "c"]
    assert len(report["rounds"]) == 3
    report, _ = run(path, sites=None)  # a pathlib.Path too
    assert len(report["rounds"]) == 3


def bad(fit):
    """A client of site 'b' whose fit returns what `fit` makes of the good result."""

    class Bad(Known):
        def fit(self, parameters, config):
            good = super().fit(parameters, config)
            return fit(good) if self.start == 9.0 else good

    return Bad


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda g: ([np.full((2, 3), np.nan), g[0][1]], g[1], g[2]),
         "tensor 'parameters[0]' holds a non-finite value at index 0"),
        (lambda g: ([g[0][0], np.array([1.0, np.inf, 0.0])], g[1], g[2]),
         "tensor 'parameters[1]' holds a non-finite value at index 1"),
        (lambda g: ([np.zeros((3, 2)), g[0][1]], g[1], g[2]),
         "tensor 'parameters[0]' has shape [3, 2], expected [2, 3]"),
        (lambda g: ([g[0][0]], g[1], g[2]), "expected 2 tensors, got 1"),
        (lambda g: (g[0], -5, g[2]), "a negative example count (-5)"),
        (lambda g: (g[0], 0, g[2]), "n_examples = 0"),
        (lambda g: (g[0], 2**70, g[2]), "not an integer a site could have"),
        (lambda g: (g[0], 2.5, g[2]), "n_examples = 2.5, not an integer"),
        (lambda g: (g[0], g[1], {"loss": float("nan")}), "metric 'loss' = NaN"),
        (lambda g: (g[0], g[1], {"loss": "low"}), "metric 'loss' = 'low', not a number"),
        (lambda g: (g[0], g[1]), "something other than (parameters, n_examples, metrics)"),
        (lambda g: (np.zeros(9), g[1], g[2]), "parameters that are not a list of arrays"),
        (lambda g: (["x", g[0][1]], g[1], g[2]), "parameters[0], which is not an array of numbers"),
    ],
)
def test_bad_fit_returns_are_refused_with_what_was_wrong(change, expected):
    report, _ = run(make=bad(change))
    for record in report["rounds"]:
        # Site b leaves each round with the reason; the others count.
        assert record["accepted"] == 2
        assert len(record["site_errors"]) == 1, record["site_errors"]
        error = record["site_errors"][0]
        assert error.startswith("site 'b': external learner: fit returned"), error
        assert expected in error, error


def test_a_clients_exception_in_fit_says_what_and_where():
    class Raises(Known):
        def fit(self, parameters, config):
            if self.start == 9.0:
                raise ValueError("boom")
            return super().fit(parameters, config)

    report, _ = run(make=Raises)
    error = report["rounds"][0]["site_errors"][0]
    assert "site 'b': external learner: fit failed: ValueError: boom" in error, error
    assert "test_simulate.py:" in error and "in fit)" in error, error


@pytest.mark.parametrize(
    "result, expected",
    [
        ((float("nan"), 10, {"accuracy": 0.5}), "loss = NaN"),
        ((0.3, -1, {"accuracy": 0.5}), "a negative example count (-1)"),
        ((0.3, 10, {}), "no accuracy"),
        ((0.3, 10, {"accuracy": 2.0}), "metric 'accuracy' = 2"),
        ((0.3, 10, {"n_correct": 11}), "11 rows right of 10"),
        (("high", 10, {"accuracy": 0.5}), "loss = 'high', not a number"),
    ],
)
def test_bad_evaluations_stop_the_run_with_what_was_wrong(result, expected):
    class Bad(Known):
        def evaluate(self, parameters, config):
            return result

    with pytest.raises(tessera.TesseraError) as error:
        run(make=Bad)
    assert "evaluate returned" in str(error.value), str(error.value)
    assert expected in str(error.value), str(error.value)


def test_clients_of_another_layout_are_refused_before_any_round():
    class Other(Known):
        def get_parameters(self):
            if self.start == 5.0:
                return [np.zeros((2, 3)), np.zeros(4)]
            return super().get_parameters()

    with pytest.raises(tessera.TesseraError) as error:
        run(make=Other)
    message = str(error.value)
    assert "site 'c'" in message and "another layout than site 'a'" in message, message
    assert "tensor 'parameters[1]' has shape [4], expected [3]" in message, message


def test_plans_and_sites_tessera_cannot_use_are_refused():
    with pytest.raises(tessera.TesseraError, match="no sites"):
        tessera.simulate(PLAN, Known)
    with pytest.raises(tessera.TesseraError, match="rounds"):
        run(PLAN.replace("rounds = 3", "rounds = 0"))
    with pytest.raises(tessera.TesseraError, match="synchronous flat rounds"):
        clear = '[privacy]\nsite_metrics = "clear"\n'
        run(PLAN.replace('strategy = "fedavg"', 'strategy = "fedavg"\nmode = "async"') + clear)
    with pytest.raises(tessera.TesseraError, match="declare its training rows"):
        run(PLAN + '[privacy]\nmode = "local"\nnoise_multiplier = 1.0\n')
    with pytest.raises(tessera.TesseraError, match="'nowhere', which is not one of the sites"):
        run(train_rows={"a": 10, "nowhere": 5})
    with pytest.raises(TypeError, match="plan must be a path or TOML text"):
        tessera.simulate(42, Known)
