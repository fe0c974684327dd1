"""Tessera from Python: bring your own model to a Tessera federation.

A site's model is a :class:`Client` (the shape of Flower's ``NumPyClient``:
``get_parameters``, ``fit``, ``evaluate`` over lists of numpy arrays).
:func:`simulate` runs a plan's rounds in Tessera's Rust simulator with one
client per site: the plan's strategy, robust rule, secure aggregation,
central DP and compression apply as for Tessera's built-in models.
:func:`run_participant` joins a deployed federation (a ``tessera
coordinator`` running a plan with ``[model] kind = "external"``) with one
client, through the same Rust participant as ``tessera participant``.
"""

import json
import os

from ._bridge import Bridge, Client, _numpy
from ._tessera import TesseraError
from ._tessera import run_participant as _run_participant
from ._tessera import simulate as _simulate

__all__ = ["Client", "TesseraError", "run_participant", "simulate"]


def _plan_text(plan):
    """(TOML text, its name in messages) of a plan given as a path or as text."""
    if isinstance(plan, os.PathLike) or (
        isinstance(plan, str) and "\n" not in plan and plan.strip().endswith(".toml")
    ):
        path = os.fspath(plan)
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    if isinstance(plan, str):
        return plan, "<plan text>"
    raise TypeError(f"plan must be a path or TOML text, not {type(plan).__name__}")


def simulate(plan, client_fn, *, sites=None, on_round=None, train_rows=None):
    """Runs ``plan`` (a path to a TOML plan, or its text) in Tessera's
    simulator with ``client_fn(site_name)`` as each site's :class:`Client`,
    and returns the run's report (the JSON ``tessera simulate`` writes) as a
    dict, with ``parameters``: the final global model as numpy arrays.

    The sites are ``sites`` (a list of names), or else the plan's
    ``[[data.sites]]``; the global model starts from the first site's (by
    name) ``get_parameters()``. The plan's ``[data]`` and ``[model]`` are
    not used: each client holds its own data and model. Rounds are
    synchronous and flat. ``on_round(record)``, when given, is called after
    each round with its record (a dict, as in the report's ``rounds``).
    ``train_rows`` (a dict: site name to its number of training rows) is
    needed under local DP, whose accounting takes each site's sampling rate
    as the batch size over its rows.

    Cost: the simulator runs sites on its own threads with the GIL
    released, but every call into a client takes the GIL, so Python clients
    train one at a time (native code that releases the GIL, as numpy's and
    torch's kernels do, may overlap). A client's exception in ``fit`` makes
    its site leave that round (the round's ``site_errors`` say why); one in
    ``get_parameters`` or ``evaluate`` stops the run with
    :class:`TesseraError`.
    """
    text, origin = _plan_text(plan)
    if sites is not None:
        sites = [str(s) for s in sites]

    def make(site):
        client = client_fn(site)
        if client is None:
            raise TesseraError(f"client_fn({site!r}) returned None, not a client")
        return Bridge(client, site)

    observer = None
    if on_round is not None:
        def observer(record):
            on_round(json.loads(record))

    if train_rows is not None:
        train_rows = {str(k): int(v) for k, v in dict(train_rows).items()}
    report, parameters = _simulate(text, origin, make, sites, observer, train_rows)
    report = json.loads(report)
    report["parameters"] = _numpy(parameters)
    return report


def run_participant(
    client,
    coordinator,
    site,
    *,
    train_rows,
    test_rows,
    tls=None,
    tls_domain=None,
    expect_plan=None,
    give_up_after=300.0,
    ledger=None,
):
    """Takes part in the run of the coordinator at ``coordinator`` (e.g.
    ``https://coord.example.org:7000``) as ``site`` with ``client``, until
    the run is over; returns ``{"run_id", "updates_accepted", "round",
    "parameters", "trainings", "privacy"}``: the final global model as
    numpy arrays and its round (``None`` when the run ended before one was
    evaluated), the trainings the site ran, and under local DP
    ``{"epsilon", "delta"}`` as the site's own ledger counts them (else
    ``None``).

    ``train_rows`` and ``test_rows`` are the rows the client trains and
    evaluates on: declared to the coordinator, they bound every count the
    client reports. ``tls`` is the site's certificate folder (``tessera ca
    issue --site NAME``; ``None``: plain text, for local experiments only),
    ``expect_plan`` the plan the site agreed to (a path or TOML text: a
    coordinator whose plan differs is refused). ``ledger`` is the site's
    own privacy ledger file (``tessera participant --ledger``: its releases
    per plan across runs, checked against the plan's budgets before each;
    ``None``: counted in memory for this call only). The coordinator's plan says
    ``[model] kind = "external"``; its first site by name gives the initial
    model. TLS, heartbeats, reconnection, secure aggregation and compression
    are the Rust participant's. A refusal raises :class:`TesseraError` with
    the cause as its message and the exit code ``tessera participant``
    would give (README, "exit codes") as ``args[1]``.
    """
    plan = None
    if expect_plan is not None:
        plan = _plan_text(expect_plan)
    run_id, accepted, model, trainings, spent = _run_participant(
        Bridge(client, site),
        str(coordinator),
        str(site),
        int(train_rows),
        int(test_rows),
        None if tls is None else os.fspath(tls),
        tls_domain,
        plan,
        float(give_up_after),
        None if ledger is None else os.fspath(ledger),
    )
    round_, parameters = model if model is not None else (None, None)
    return {
        "run_id": run_id or None,
        "updates_accepted": accepted,
        "round": round_,
        "parameters": None if parameters is None else _numpy(parameters),
        "trainings": trainings,
        "privacy": None if spent is None else {"epsilon": spent[0], "delta": spent[1]},
    }

