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


def test_sklearn_deployed_with_four_processes_equals_its_simulation(tmp_path):
    """The acceptance run: a `tessera coordinator` on the external heart
    plan and four Python participant processes, one per hospital."""
    import subprocess
    import sys

    import test_deploy  # the coordinator binary and its start-up

    example = load_example()
    simulated = example.run(plan=example.DEPLOY_PLAN, sites=example.SITES)
    assert abs(simulated["final"]["accuracy"] - BUILT_IN_ACCURACY) <= 0.01
    with open(example.DEPLOY_PLAN, encoding="utf-8") as f:
        coordinator = test_deploy.Coordinator(tmp_path, f.read())
    try:
        script = os.path.join(ROOT, "examples", "python", "sklearn_heart.py")
        sites = [
            subprocess.Popen(
                [sys.executable, script, "--coordinator", coordinator.url, "--site", site],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for site in example.SITES
        ]
        outputs = [p.communicate(timeout=300)[0] for p in sites]
        for p, out in zip(sites, outputs):
            assert p.returncode == 0, out
        log = coordinator.finish()
    finally:
        coordinator.kill()
    assert "finished 15 rounds" in log, log
    # Each hospital's figure is the simulation's on its own rows; pooled
    # over the four, the simulation's accuracy, within a point of the built-in.
    right = rows = 0
    for site, out in zip(example.SITES, outputs):
        n_test = int(out.split(" test rows")[0].split()[-1])
        accuracy = float(out.strip().split("accuracy ")[-1])
        right += round(accuracy * n_test)
        rows += n_test
    assert rows == 254
    assert abs(right / rows - simulated["final"]["accuracy"]) < 1e-9, outputs
    assert abs(right / rows - BUILT_IN_ACCURACY) <= 0.01
