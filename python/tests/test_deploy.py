"""Python clients in a deployed federation: a real `tessera coordinator`
process on 127.0.0.1 and one tessera.run_participant per site (threads of
this process, each through the Rust participant). Deployment equals
simulation bit for bit for deterministic clients, a Flower NumPyClient runs
unchanged, and a plan the site did not agree to is refused with exit code 17.

The coordinator is the binary `cargo test` built (target/debug/tessera, or
TESSERA_BIN); .ci/run builds it before pytest, and with TESSERA_E2E set a
missing binary fails instead of skipping."""

import os
import subprocess
import threading

import numpy as np
import pytest

import tessera
import tessera.flower

from tessera.continual import Elastic
from test_continual import FEATURES, CLASSES, SITES as CONTINUAL_SITES, Softmax, population
from test_continual import PLAN as CONTINUAL_PLAN, pooled_accuracy
from test_flower import SITES as FLOWER_SITES, FlowerLogistic, PLAN as FLOWER_PLAN
from test_simulate import SITES, Known

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("TESSERA_BIN") or os.path.join(ROOT, "target", "debug", "tessera")

if not os.path.exists(BINARY):
    if os.environ.get("TESSERA_E2E"):
        raise FileNotFoundError(f"{BINARY}: build it first (cargo build -p tessera-cli)")
    pytest.skip(f"no tessera binary at {BINARY}", allow_module_level=True)

PLAN = """
name = "python-deploy"
seed = 7
[model]
kind = "external"
[training]
steps = 3
batch_size = 8
lr = 0.5
[federation]
rounds = 3
strategy = "fedavg"
min_participants = {sites}
"""


class Coordinator:
    """A `tessera coordinator` over `plan` in `folder`, until it exits."""

    def __init__(self, folder, plan):
        path = folder / "plan.toml"
        path.write_text(plan)
        self.process = subprocess.Popen(
            [BINARY, "coordinator", "--plan", str(path), "--db", str(folder / "run.sqlite"),
             "--listen", "127.0.0.1:0", "--insecure"],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("listening on "):
                self.url = "http://" + line.split()[-1]
                break
        else:
            raise RuntimeError("the coordinator did not start:\n" + "".join(self.lines))
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout))
        self.reader.start()

    def finish(self):
        code = self.process.wait(timeout=120)
        self.reader.join()
        assert code == 0, "".join(self.lines)
        return "".join(self.lines)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join()


def deploy(folder, plan, clients, rows, run=tessera.run_participant, **kwargs):
    """Every site's run_participant in a thread of its own; their results."""
    coordinator = Coordinator(folder, plan)
    results, errors = {}, {}

    def take_part(site):
        try:
            results[site] = run(
                clients[site], coordinator.url, site,
                train_rows=rows[site][0], test_rows=rows[site][1], give_up_after=60, **kwargs,
            )
        except Exception as e:  # reported below, with the coordinator's log
            errors[site] = e

    threads = [threading.Thread(target=take_part, args=(s,)) for s in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors, (errors, "".join(coordinator.lines))
        coordinator.finish()
    finally:
        coordinator.kill()
    return results


def test_python_clients_deployed_equal_their_simulation_bit_for_bit(tmp_path):
    plan = PLAN.format(sites=len(SITES))
    simulated = tessera.simulate(plan, Known, sites=list(SITES))
    rows = {s: (v[2], v[3]) for s, v in SITES.items()}
    results = deploy(tmp_path, plan, {s: Known(s) for s in SITES}, rows)
    for site, result in results.items():
        assert result["round"] == 3, result
        assert result["updates_accepted"] == 3, result
        for a, b in zip(result["parameters"], simulated["parameters"]):
            np.testing.assert_array_equal(a, b, err_msg=site)
    assert len({r["run_id"] for r in results.values()}) == 1


def test_a_flower_client_joins_a_coordinator_unchanged(tmp_path):
    plan = FLOWER_PLAN.format(strategy="fedavg").split("[data]")[0] + """
[model]
kind = "external"
[training]
steps = 5
batch_size = 16
lr = 0.5
[federation]
rounds = 8
strategy = "fedavg"
min_participants = 4
"""
    simulated = tessera.flower.simulate(plan, FlowerLogistic, sites=FLOWER_SITES)
    clients = {s: FlowerLogistic(s) for s in FLOWER_SITES}
    rows = {s: (len(c.y), len(c.y_test)) for s, c in clients.items()}
    results = deploy(tmp_path, plan, clients, rows, run=tessera.flower.run)
    for result in results.values():
        for a, b in zip(result["parameters"], simulated["parameters"]):
            np.testing.assert_array_equal(a, b)
    assert simulated["final"]["accuracy"] > 0.8


def test_elastic_weight_consolidation_deployed_equals_its_simulation(tmp_path):
    # Two deployed runs: the first on the earlier population; each site
    # takes the final model home and measures its own importance on its own
    # rows; the second, on the later population, starts from that model
    # (every site's get_parameters) with each site held to it by Elastic,
    # which also checks that round 1's model is it. Each run equals its
    # simulation bit for bit, and the earlier population is forgotten less
    # than half as much as under plain continued training.
    plan = (
        CONTINUAL_PLAN.split("[data]")[0]
        + '[model]\nkind = "external"\n'
        + "[training]" + CONTINUAL_PLAN.split("[training]")[1]
        + f"min_participants = {len(CONTINUAL_SITES)}\n"
    )
    earlier, later = population(1, False), population(101, True)
    rows = {s: (len(earlier[s][1]), len(earlier[s][3])) for s in CONTINUAL_SITES}
    zero = [np.zeros((FEATURES, CLASSES)), np.zeros(CLASSES)]

    def run(folder, data, start, elastic=None):
        # Fresh clients for each run: each draws its batches from the start.
        def fresh():
            return {
                s: Softmax(data[s], start, None if elastic is None else elastic[s])
                for s in CONTINUAL_SITES
            }

        simulated = tessera.simulate(plan, fresh().__getitem__, sites=CONTINUAL_SITES)
        clients = fresh()
        folder.mkdir()
        results = deploy(folder, plan, clients, rows)
        for result in results.values():
            assert result["round"] == 15 and len(result["parameters"]) == 2, result
            for a, b in zip(result["parameters"], simulated["parameters"], strict=True):
                np.testing.assert_array_equal(a, b)
        return results, clients

    results, clients = run(tmp_path / "first", earlier, zero)
    held = {}
    for site, client in clients.items():
        before = results[site]["parameters"]
        held[site] = Elastic(before, client.importance(before), 3.0)
    before = results[CONTINUAL_SITES[0]]["parameters"]
    plain = run(tmp_path / "plain", later, before)[0][CONTINUAL_SITES[0]]["parameters"]
    ewc = run(tmp_path / "ewc", later, before, held)[0][CONTINUAL_SITES[0]]["parameters"]
    start = pooled_accuracy(before, earlier)
    plain_drop = start - pooled_accuracy(plain, earlier)
    ewc_drop = start - pooled_accuracy(ewc, earlier)
    print(f"deployed: earlier {start:.4f}; plain forgets {plain_drop:.4f}, EWC {ewc_drop:.4f}")
    assert plain_drop > 0.15 and ewc_drop < plain_drop / 2, (plain_drop, ewc_drop)
    assert pooled_accuracy(ewc, later) > pooled_accuracy(before, later) + 0.2


def test_a_site_refuses_a_plan_it_did_not_agree_to(tmp_path):
    plan = PLAN.format(sites=1)
    agreed = plan.replace("rounds = 3", "rounds = 2")
    coordinator = Coordinator(tmp_path, plan)
    try:
        with pytest.raises(tessera.TesseraError) as refused:
            tessera.run_participant(
                Known("a"), coordinator.url, "a", train_rows=10, test_rows=20,
                expect_plan=agreed, give_up_after=30,
            )
        message, code = refused.value.args
        assert code == 17, refused.value.args
        assert "federation" in message, message
    finally:
        coordinator.kill()


def test_row_counts_and_times_are_checked_before_joining():
    with pytest.raises(tessera.TesseraError, match="give_up_after"):
        tessera.run_participant(
            Known("a"), "http://127.0.0.1:9", "a", train_rows=10, test_rows=20, give_up_after=-1
        )
    with pytest.raises(OverflowError):
        tessera.run_participant(Known("a"), "http://127.0.0.1:9", "a", train_rows=-1, test_rows=2)
