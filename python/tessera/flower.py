"""Flower clients, unchanged, in Tessera's federations.

A Flower user keeps their ``flwr.client.NumPyClient`` subclass as it is and
changes the launcher::

    import tessera.flower
    report = tessera.flower.simulate("plan.toml", lambda site: MyFlowerClient(site))
    # or, deployed: one process per site against a `tessera coordinator`
    tessera.flower.run(MyFlowerClient(site), "https://coord:7000", site,
                       train_rows=..., test_rows=..., tls="tls/")

:class:`FlowerClient` adapts the client to :class:`tessera.Client`:
``get_parameters`` is called with an empty config (Flower's signature),
``fit`` and ``evaluate`` get Tessera's config with its scalar values only
(``round``, ``strategy``, ``lr``, ``batch_size``, ``local_epochs``,
``local_steps``, ``proximal_mu``: the name Flower's FedProx uses), and
metrics that are not numbers (Flower allows strings and bytes) are left
out. Flower itself need not be installed: any object with the three
methods of ``NumPyClient`` works.

A Flower client applies no correction term: under a strategy that sends one
(SCAFFOLD, FedDyn) its ``fit`` is refused with the reason, rather than run
as a different algorithm than the plan names.
"""

import numbers

from . import Client, run_participant as _run_participant, simulate as _simulate

__all__ = ["FlowerClient", "run", "simulate"]

_SCALARS = (bool, numbers.Number, str, bytes)


class FlowerClient(Client):
    """A Flower ``NumPyClient`` (``get_parameters(config)``,
    ``fit(parameters, config)``, ``evaluate(parameters, config)``) as a
    Tessera client."""

    def __init__(self, client):
        for method in ("get_parameters", "fit", "evaluate"):
            if not callable(getattr(client, method, None)):
                raise TypeError(
                    f"{type(client).__name__} has no {method}(): not a Flower NumPyClient"
                )
        self.client = client

    def get_parameters(self):
        return self.client.get_parameters({})

    def fit(self, parameters, config):
        if config.get("correction") is not None:
            raise ValueError(
                f"the plan's strategy ({config.get('strategy')}) sends a correction term a "
                "Flower NumPyClient does not apply: use fedavg, fedprox (its proximal_mu "
                "is in the config) or another strategy without one, or write a tessera.Client"
            )
        parameters, n, metrics = self.client.fit(parameters, _scalars(config))
        return parameters, n, _numbers(metrics)

    def evaluate(self, parameters, config):
        loss, n, metrics = self.client.evaluate(parameters, _scalars(config))
        return loss, n, _numbers(metrics)


def _scalars(config):
    """Tessera's config with the values Flower's ``Scalar`` allows."""
    return {k: v for k, v in config.items() if isinstance(v, _SCALARS)}


def _numbers(metrics):
    """Flower's metrics less those that are not numbers."""
    if not isinstance(metrics, dict):
        return metrics
    return {k: v for k, v in metrics.items() if isinstance(v, numbers.Number)}


def simulate(plan, client_fn, **kwargs):
    """:func:`tessera.simulate` with ``client_fn(site)`` returning Flower
    ``NumPyClient`` objects (or Flower ``Client`` objects made with
    ``to_client()``, whose NumPy client is used)."""

    def make(site):
        client = client_fn(site)
        return client if isinstance(client, Client) else FlowerClient(_numpy_client(client))

    return _simulate(plan, make, **kwargs)


def _numpy_client(client):
    """The ``NumPyClient`` behind a Flower ``Client`` made by ``to_client()``."""
    inner = getattr(client, "numpy_client", None)
    return inner if inner is not None else client


def run(client, coordinator, site, **kwargs):
    """:func:`tessera.run_participant` with a Flower ``NumPyClient`` (or a
    ``to_client()`` object): the client joins a deployed Tessera federation
    unchanged. Takes ``train_rows``, ``test_rows``, ``tls``, ``expect_plan``
    and the rest as ``run_participant`` does."""
    adapted = client if isinstance(client, Client) else FlowerClient(_numpy_client(client))
    return _run_participant(adapted, coordinator, site, **kwargs)

