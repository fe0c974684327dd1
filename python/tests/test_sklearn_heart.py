"""The scikit-learn example on Fed-Heart-Disease reaches the accuracy of
Tessera's built-in logistic regression on the same plan."""

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# `tessera simulate --plan examples/fed-heart-disease.toml` (FedAvg, 15
# rounds, seed 42): accuracy over the 254 test rows of the four hospitals.
BUILT_IN_ACCURACY = 0.7520


def load_example():
    path = os.path.join(ROOT, "examples", "python", "sklearn_heart.py")
    spec = importlib.util.spec_from_file_location("sklearn_heart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sklearn_fedavg_is_within_one_point_of_the_built_in_model():
    report = load_example().run()
    assert report["rounds"][-1]["n_test"] == 254
    assert len(report["rounds"]) == 15
    assert all(r["accepted"] == 4 for r in report["rounds"])
    accuracy = report["final"]["accuracy"]
    assert abs(accuracy - BUILT_IN_ACCURACY) <= 0.01, accuracy
