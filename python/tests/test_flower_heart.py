"""The Flower example: a NumPyClient of Flower's quickstart shape, launched
by Tessera unchanged, reaches the built-in logistic regression's accuracy on
Fed-Heart-Disease (within a point)."""

import importlib.util
import os

import pytest

if os.environ.get("TESSERA_REQUIRE_FLWR"):
    import flwr  # noqa: F401  (.ci/run installs Flower: a missing one fails)
else:
    pytest.importorskip("flwr")
pytest.importorskip("sklearn")  # the example reads the rows as sklearn_heart.py does

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILT_IN_ACCURACY = 0.7520  # `tessera simulate --plan examples/fed-heart-disease.toml`


def test_the_flower_example_is_within_one_point_of_the_built_in_model():
    path = os.path.join(ROOT, "examples", "python", "flower_heart.py")
    spec = importlib.util.spec_from_file_location("flower_heart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The client is Flower's own class, untouched by Tessera.
    from flwr.client import NumPyClient

    assert issubclass(module.HeartFlowerClient, NumPyClient)
    report = module.run()
    assert len(report["rounds"]) == 15
    assert all(r["accepted"] == 4 for r in report["rounds"])
    assert report["rounds"][-1]["n_test"] == 254
    assert abs(report["final"]["accuracy"] - BUILT_IN_ACCURACY) <= 0.01, report["final"]
