"""The PyTorch example (examples/python/torch_mnist.py): a CNN at each of 10
Dirichlet(0.5) sites of the bundled MNIST sample. Runs where torch is
importable (it is not installed by CI: its wheels carry CUDA libraries of
several gigabytes); BENCHMARKS.md has its full run's figures."""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def example():
    path = os.path.join(ROOT, "examples", "python", "torch_mnist.py")
    spec = importlib.util.spec_from_file_location("torch_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sites_are_a_dirichlet_split_of_every_digit_once():
    module = example()
    _, labels = module.load()
    sites = module.dirichlet_sites(labels, 10, 0.5, seed=1)
    rows = np.concatenate(sites)
    assert len(rows) == 5000 and len(np.unique(rows)) == 5000
    # Skewed: some site's most common digit is far above the 10% of a uniform split.
    shares = [np.bincount(labels[s], minlength=10).max() / len(s) for s in sites if len(s)]
    assert max(shares) > 0.3, shares


def test_a_few_rounds_learn_the_digits_and_rerun_to_the_same_bits():
    module = example()
    first = module.main(rounds=5, seed=1)
    second = module.main(rounds=5, seed=1)
    for a, b in zip(first["parameters"], second["parameters"]):
        np.testing.assert_array_equal(a, b)
    # Far above chance (0.1) after five rounds of skewed sites.
    accuracies = [r["accuracy"] for r in first["rounds"]]
    assert accuracies[-1] > 0.4, accuracies
    assert first["rounds"][-1]["n_test"] == sum(
        len(s) - int(0.8 * len(s)) for s in module.dirichlet_sites(module.load()[1], 10, 0.5, 1)
    )
