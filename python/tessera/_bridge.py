"""The bridge between a Python client and Tessera's native module.

The native side sees plain values only: parameters as ``(shape, bytes)``
pairs of little-endian float32, example counts as ``int``, metrics as
``dict[str, float]``. The bridge converts a client's numpy arrays to and
from them, and refuses (``Refused``) what does not have the documented
shape; every number is then checked by Tessera itself (finite values, the
global model's layout, example counts of at least 0).
"""

import operator
import traceback

import numpy as np


class Refused(Exception):
    """A client returned something of the wrong kind."""


class Failed(Exception):
    """A client's own code raised an exception."""


class Client:
    """A site's model and data, trained and evaluated by Tessera's rounds.

    Subclass it and implement the three methods (the shape of Flower's
    ``NumPyClient``). Parameters are lists of numpy arrays, always in the
    same order and shapes; Tessera sends them as float32.
    """

    def get_parameters(self):
        """The model's parameters as they start: ``list[np.ndarray]``."""
        raise NotImplementedError("Client.get_parameters")

    def fit(self, parameters, config):
        """Trains from the global ``parameters``; returns
        ``(parameters, n_examples, metrics)``.

        ``config`` holds ``round``, ``strategy`` (``plain``, ``fedprox``,
        ``scaffold``, ``feddyn``), the plan's ``lr``, ``batch_size``,
        ``local_epochs`` and ``local_steps`` (``None`` when the plan counts
        the other), and the strategy's term: add
        ``proximal_mu * (w - parameters) + correction`` to every gradient
        (``correction`` is ``None`` or a list of arrays shaped like the
        parameters). Under SCAFFOLD, train with ``config["lr"]`` and report
        ``metrics["n_steps"]``. ``metrics`` may report ``loss`` (the mean
        training loss); values must be numbers.

        Under local DP (``[privacy] mode = "local"``) ``config`` also holds
        the DP-SGD the client must run, as its site accounts it: each step
        draws a Poisson batch (every row with probability
        ``dp_sampling_rate``), clips every example's gradient to norm
        ``dp_clip_norm``, adds Gaussian noise of standard deviation
        ``dp_noise_multiplier * dp_clip_norm`` to their sum; at most
        ``dp_max_steps`` steps, seeded with ``dp_seed`` (fresh each round,
        from the site's secret key). Report the steps taken as
        ``metrics["n_steps"]`` and the site's declared training rows as
        ``n_examples``; the site refuses anything else. Tessera does the
        accounting; the guarantee holds only if the client's DP-SGD does
        what these numbers say (Opacus with ``poisson_sampling=True``, or
        code of your own).
        """
        raise NotImplementedError("Client.fit")

    def evaluate(self, parameters, config):
        """Evaluates the global ``parameters`` on the site's test rows;
        returns ``(loss, n_examples, metrics)`` with ``loss`` the mean loss
        and ``metrics`` holding ``accuracy`` (a share in [0, 1]) or
        ``n_correct``, and optionally ``auc``."""
        raise NotImplementedError("Client.evaluate")


def _where(error):
    """Where an exception was raised: the innermost frame, as file:line in function."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" ({frame.filename}:{frame.lineno} in {frame.name})"


def _arrays(what, parameters):
    """A client's parameters as (shape, float32 bytes) pairs."""
    if isinstance(parameters, np.ndarray) or not isinstance(parameters, (list, tuple)):
        raise Refused(f"{what} that are not a list of arrays (got {type(parameters).__name__})")
    out = []
    for i, array in enumerate(parameters):
        try:
            a = np.asarray(array, dtype="<f4")
        except (TypeError, ValueError) as e:
            raise Refused(f"parameters[{i}], which is not an array of numbers ({e})") from None
        out.append((tuple(int(d) for d in a.shape), np.ascontiguousarray(a).tobytes()))
    return out


def _numpy(pairs):
    """(shape, bytes) pairs as writable float32 arrays."""
    return [np.frombuffer(b, dtype="<f4").reshape(shape).copy() for shape, b in pairs]


def _count(value):
    try:
        return operator.index(value)
    except TypeError:
        raise Refused(f"n_examples = {value!r}, not an integer") from None


def _metrics(metrics):
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise Refused(f"metrics that are not a dict (got {type(metrics).__name__})")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise Refused(f"a metric named {key!r}, not a string")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise Refused(f"metric '{key}' = {value!r}, not a number") from None
    return out


def _triple(what, result):
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise Refused(f"something other than {what} (got {type(result).__name__})")
    return result


class Bridge:
    """One client as the native module calls it."""

    def __init__(self, client, site):
        self.client = client
        self.site = site

    def _call(self, method, *args):
        try:
            return getattr(self.client, method)(*args)
        except Exception as e:  # the client's own failure, named with its place
            raise Failed(f"{type(e).__name__}: {e}{_where(e)}") from e

    def get_parameters(self):
        return _arrays("parameters", self._call("get_parameters"))

    def fit(self, parameters, config):
        config = dict(config)
        if config.get("correction") is not None:
            config["correction"] = _numpy(config["correction"])
        result = self._call("fit", _numpy(parameters), config)
        new, n, metrics = _triple("(parameters, n_examples, metrics)", result)
        return _arrays("parameters", new), _count(n), _metrics(metrics)

    def evaluate(self, parameters, config):
        result = self._call("evaluate", _numpy(parameters), dict(config))
        loss, n, metrics = _triple("(loss, n_examples, metrics)", result)
        try:
            loss = float(loss)
        except (TypeError, ValueError):
            raise Refused(f"loss = {loss!r}, not a number") from None
        return loss, _count(n), _metrics(metrics)
