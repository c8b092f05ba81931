"""Kernel-regression accuracy of infinite networks on real data.

The default run: scikit-learn's built-in digits (1797 8x8 grayscale images, 10
classes; shipped with scikit-learn, no download), a random subsample of
train and test images, and three architectures whose infinite-width kernels
are compared:

* ``FC``: ``Flatten`` then two ReLU ``Dense`` layers;
* ``CNN``: two ReLU ``Conv`` layers read out by ``Flatten``;
* ``CNN-GAP``: two ReLU ``Conv`` layers read out by ``GlobalAvgPool``.

Each is scored with the NNGP and the NTK, at ``t = inf`` (kernel regression)
and at finite gradient-flow times, by regression on centered one-hot targets
(Lee et al. 2018; Novak et al. 2019): the predicted class is the argmax of
the ensemble's mean output, ``predict.gradient_descent_mse`` with zero
initial outputs. Widths in the specs do not matter: kernels are width-free.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_ARCHITECTURES", "load_digits", "one_hot", "Row",
           "evaluate", "to_markdown", "compute_kernels"]

_AFFINE = "W_std=1.5, b_std=0.05"
DEFAULT_ARCHITECTURES = {
    "FC": (f"Flatten Dense(512, {_AFFINE}) Relu Dense(512, {_AFFINE}) Relu "
           f"Dense(10, {_AFFINE})"),
    "CNN": (f"Conv(64, (3, 3), SAME, {_AFFINE}) Relu "
            f"Conv(64, (3, 3), SAME, {_AFFINE}) Relu Flatten "
            f"Dense(10, {_AFFINE})"),
    "CNN-GAP": (f"Conv(64, (3, 3), SAME, {_AFFINE}) Relu "
                f"Conv(64, (3, 3), SAME, {_AFFINE}) Relu GlobalAvgPool "
                f"Dense(10, {_AFFINE})"),
}


def load_digits(n_train: int = 300, n_test: int = 200, seed: int = 0):
  """A random split of scikit-learn's digits, as NHWC images.

  Returns:
    ``x_train (n_train, 8, 8, 1)``, ``y_train (n_train,)`` int labels,
    ``x_test``, ``y_test``; pixels scaled to zero mean, unit variance
    (statistics of the whole data set).
  """
  try:
    from sklearn.datasets import load_digits as sk_digits
  except ImportError as e:
    raise ImportError("the digits data need scikit-learn: pip install "
                      "'widenets[sklearn]'") from e
  d = sk_digits()
  x = d.images.astype(np.float32)[..., None]
  x = (x - x.mean()) / x.std()
  n = x.shape[0]
  if n_train < 1 or n_test < 1 or n_train + n_test > n:
    raise ValueError(f"need 1 <= n_train, n_test and n_train + n_test <= "
                     f"{n}; got n_train={n_train}, n_test={n_test}.")
  perm = np.random.default_rng(seed).permutation(n)
  tr, te = perm[:n_train], perm[n_train:n_train + n_test]
  return x[tr], d.target[tr], x[te], d.target[te]


def one_hot(labels, n_classes: int) -> np.ndarray:
  """Centered one-hot targets: ``1 - 1/C`` for the class, ``-1/C`` else."""
  labels = np.asarray(labels)
  return (np.eye(n_classes, dtype=np.float32)[labels] -
          np.float32(1.0 / n_classes))


def compute_kernels(kernel_fn, x_train, x_test, batch_size: int = 50,
                    get=("nngp", "ntk"), progress=None):
  """Train-train and test-train kernels, block by block (`batch`)."""
  from ..batching import batch
  kb = batch(kernel_fn, batch_size, progress=progress or False)
  k_dd = kb(x_train, None, get)
  k_td = kb(x_test, x_train, get)
  return k_dd, k_td


@dataclasses.dataclass
class Row:
  """One architecture and kernel: ``accuracy[t]`` (fractions), the time the
  kernels of that architecture took, and its spec."""
  architecture: str
  kernel: str
  accuracy: dict
  seconds: float
  spec: str


def _t_key(t) -> str:
  return "inf" if t is None or math.isinf(t) else f"{t:g}"


def evaluate(architectures: Optional[Mapping[str, str]] = None,
             data=None, times: Sequence[float] = (1e2, 1e3, 1e4, math.inf),
             kernels: Sequence[str] = ("nngp", "ntk"),
             diag_reg: float = 1e-4, batch_size: int = 50,
             log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """Accuracy of kernel regression for each architecture, kernel and time.

  Args:
    architectures: ``{name: spec string or stax triple}``; default
      `DEFAULT_ARCHITECTURES`.
    data: ``(x_train, y_train, x_test, y_test)`` with integer labels;
      default `load_digits()`.
    times: gradient-flow times in ``predict`` units (learning rate 1);
      ``inf`` is kernel regression.
    diag_reg: relative diagonal regularizer (``predict``'s convention).
    batch_size: kernel block size (memory vs. speed).
    log: called with a line of progress per architecture.

  Returns:
    One `Row` per architecture and kernel.
  """
  from .. import predict, spec as spec_lib
  architectures = dict(architectures or DEFAULT_ARCHITECTURES)
  x_train, y_train, x_test, y_test = data if data is not None else \
      load_digits()
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  if len(x_train) != len(y_train) or len(x_test) != len(y_test):
    raise ValueError(f"inputs and labels differ in length: x_train "
                     f"{len(x_train)} vs y_train {len(y_train)}, x_test "
                     f"{len(x_test)} vs y_test {len(y_test)}.")
  n_classes = int(max(y_train.max(), y_test.max())) + 1
  targets = one_hot(y_train, n_classes)
  finite = np.array([t for t in times if not math.isinf(t)], np.float32)
  rows = []
  for name, arch in architectures.items():
    kernel_fn = (spec_lib.parse(arch) if isinstance(arch, str) else arch)[2]
    start = time.perf_counter()
    k_dd, k_td = compute_kernels(kernel_fn, x_train, x_test, batch_size,
                                 tuple(kernels))
    seconds = time.perf_counter() - start
    for g in kernels:
      fn = predict.gradient_descent_mse(np.asarray(getattr(k_dd, g)), targets,
                                        diag_reg=diag_reg)
      kt = np.asarray(getattr(k_td, g))
      acc = {}
      if finite.size:
        out = np.asarray(fn(t=finite, fx_train_0=None, fx_test_0=0.,
                            k_test_train=kt))
        for t, o in zip(finite, out):
          acc[_t_key(float(t))] = float(np.mean(o.argmax(-1) == y_test))
      if any(math.isinf(t) for t in times):
        o = np.asarray(fn(t=None, fx_train_0=None, fx_test_0=0.,
                          k_test_train=kt))
        acc["inf"] = float(np.mean(o.argmax(-1) == y_test))
      rows.append(Row(name, g, acc, seconds,
                      arch if isinstance(arch, str) else "<stax triple>"))
    log(f"{name}: kernels in {seconds:.1f} s; " + ", ".join(
        f"{r.kernel} t=inf {r.accuracy.get('inf', float('nan')):.3f}"
        for r in rows[-len(kernels):]))
  return rows


def to_markdown(rows: Sequence[Row], title: Optional[str] = None,
                note: Optional[str] = None) -> str:
  """The rows as a markdown table (accuracy in percent)."""
  keys = list(rows[0].accuracy) if rows else []
  head = ["architecture", "kernel"] + [f"t={k}" for k in keys] + \
      ["kernel time (s)"]
  lines = []
  if title:
    lines += [f"## {title}", ""]
  lines += ["| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
  for r in rows:
    cells = [r.architecture, r.kernel.upper()] + \
        [f"{100 * r.accuracy[k]:.1f}" for k in keys] + [f"{r.seconds:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  if note:
    lines += ["", note]
  return "\n".join(lines) + "\n"
