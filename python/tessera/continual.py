"""Continual learning for a site's own model: elastic weight consolidation
(Kirkpatrick et al., 2017) for a :class:`tessera.Client`, as ``tessera
participant --importance-out`` and ``--ewc-lambda`` give Tessera's built-in
models.

At the end of a run, each site measures the importance of every parameter
of the final model on its own rows (:func:`fisher_diagonal`: the mean
squared per-example gradient, scaled so that the largest is 1, as Tessera's
built-in importance is) and keeps it with the model (:meth:`Elastic.save`).
The next run starts from that model (every site's ``get_parameters``
returns it, so the federation starts from it too), and each site's ``fit``
adds :meth:`Elastic.gradient` to its own loss's gradient: a pull of
``lam * importance * (parameters - anchor)`` toward the earlier model,
strongest where the earlier rows depended most. Nothing of it leaves the
site. :meth:`Elastic.check_start` refuses a run that did not start from the
anchor (the built-in participant's check of the run's initial model).

The importance is a statistic of the site's rows without noise: do not use
it where the plan asks for local DP, whose guarantee it would not keep.
"""

import math

import numpy as np

__all__ = ["Elastic", "fisher_diagonal"]


def _arrays(name, values):
    """``values`` (a list of arrays, as ``get_parameters`` gives) as a list
    of float64 arrays, each real and finite, or ValueError."""
    if isinstance(values, (np.ndarray, str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}: a list of arrays, not a {type(values).__name__}")
    arrays = []
    for i, v in enumerate(values):
        a = np.asarray(v)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise ValueError(f"{name}: array {i} is not real numbers (dtype {a.dtype})")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: array {i} has a value that is not finite")
        arrays.append(a)
    return arrays


def _same_layout(name, arrays, reference, reference_name="the anchor"):
    if len(arrays) != len(reference):
        raise ValueError(f"{name}: {len(arrays)} arrays, {reference_name} has {len(reference)}")
    for i, (a, b) in enumerate(zip(arrays, reference)):
        if a.shape != b.shape:
            raise ValueError(
                f"{name}: array {i} has shape {a.shape}, {reference_name}'s is {b.shape}"
            )


def fisher_diagonal(gradients):
    """The diagonal of the empirical Fisher information: the mean, over the
    examples, of each parameter's squared gradient, scaled so that the
    largest is 1. ``gradients`` yields one list of arrays per example (the
    gradient of that example's loss at the final model, in the order of
    ``get_parameters``). Refused (ValueError) when there is no example,
    the examples' layouts differ, a value is not finite, or every gradient
    is zero (nothing would be held)."""
    total = None
    count = 0
    for g in gradients:
        g = _arrays(f"example {count}'s gradient", g)
        if total is None:
            total = [np.zeros_like(a) for a in g]
        else:
            _same_layout(f"example {count}'s gradient", g, total, "example 0's")
        # An overflow is refused below, by name, not warned of.
        with np.errstate(over="ignore"):
            for t, a in zip(total, g):
                t += a * a
        count += 1
    if count == 0:
        raise ValueError("no example: the importance needs the site's rows")
    if not all(np.all(np.isfinite(t)) for t in total):
        raise ValueError("a squared gradient summed over the examples is not a finite number")
    largest = max((float(t.max()) for t in total if t.size), default=0.0)
    if not largest > 0.0:
        raise ValueError("every gradient is zero: the importance would hold nothing")
    return [t / largest for t in total]


class Elastic:
    """The pull toward an earlier model: ``anchor`` (its parameters, as
    ``get_parameters`` gives them), ``importance`` (:func:`fisher_diagonal`,
    the same layout, each value at least 0) and ``lam`` (at least 0; 0 is
    plain continued training). With Tessera's built-in models, 1 is a good
    start with the federation's importance and 3 with each site's own
    (BENCHMARKS.md, continual learning)."""

    def __init__(self, anchor, importance, lam):
        self.anchor = _arrays("anchor", anchor)
        self.importance = _arrays("importance", importance)
        _same_layout("importance", self.importance, self.anchor)
        if any(np.any(f < 0) for f in self.importance):
            raise ValueError("importance: a value is negative")
        if isinstance(lam, (str, bytes)):
            raise ValueError(f"lam must be a number, not {lam!r}")
        lam = float(lam)
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"lam must be a finite number of at least 0, got {lam}")
        self.lam = lam

    def penalty(self, parameters):
        """``lam / 2 * sum(importance * (parameters - anchor) ** 2)``."""
        parameters = _arrays("parameters", parameters)
        _same_layout("parameters", parameters, self.anchor)
        return 0.5 * self.lam * sum(
            float(np.sum(f * (p - a) ** 2))
            for p, a, f in zip(parameters, self.anchor, self.importance)
        )

    def gradient(self, parameters):
        """The penalty's gradient, ``lam * importance * (parameters -
        anchor)``, in the layout of ``parameters``: add it to the loss's."""
        parameters = _arrays("parameters", parameters)
        _same_layout("parameters", parameters, self.anchor)
        return [
            self.lam * f * (p - a) for p, a, f in zip(parameters, self.anchor, self.importance)
        ]

    def check_start(self, parameters):
        """Refuses (ValueError) a first round's model that is not the anchor
        as Tessera carries models, in 32-bit floats, bit for bit: the run did
        not start from the model this site holds its training to."""
        parameters = _arrays("parameters", parameters)
        _same_layout("the run's model", parameters, self.anchor)
        for i, (p, a) in enumerate(zip(parameters, self.anchor)):
            if p.astype("<f4").tobytes() != a.astype("<f4").tobytes():
                raise ValueError(
                    f"the run did not start from the model this site continues from (array {i} "
                    "differs): start every site's get_parameters from that model"
                )

    def save(self, path):
        """Writes the anchor and the importance to ``path`` (numpy's .npz;
        ``lam`` is a setting of the next run, not saved)."""
        arrays = {f"anchor_{i}": a for i, a in enumerate(self.anchor)}
        arrays.update({f"importance_{i}": f for i, f in enumerate(self.importance)})
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path, lam, max_values=1 << 28):
        """What :meth:`save` wrote, with the pull ``lam``. Refused
        (ValueError) when the file is not one :meth:`save` writes, or holds
        more than ``max_values`` numbers (checked before any is read)."""
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an Elastic file (a single array, not .npz)")
        with data:
            n = sum(1 for k in data.files if k.startswith("anchor_"))
            names = {f"{kind}_{i}" for kind in ("anchor", "importance") for i in range(n)}
            if n == 0 or set(data.files) != names:
                raise ValueError(
                    f"{path}: not an Elastic file (arrays {sorted(data.files)[:8]}, expected "
                    "anchor_0.. and importance_0.. in pairs)"
                )
            values = 0
            for name in sorted(names):
                # The array's header, without its values.
                with data.zip.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read is None:
                        raise ValueError(f"{path}: {name} has .npy format {version}")
                    shape, _, _ = read(f)
                values += math.prod(shape)
            if values > max_values:
                raise ValueError(f"{path}: {values} values, more than max_values {max_values}")
            anchor = [data[f"anchor_{i}"] for i in range(n)]
            importance = [data[f"importance_{i}"] for i in range(n)]
        return cls(anchor, importance, lam)
