"""Evidence-fitted NNGP/NTK vs defaults vs scikit-learn's RBF/Matern GPs.

  python benchmarks/bench_evidence.py table     # test error on sklearn sets
  python benchmarks/bench_evidence.py timing    # LML gradient at N = 2,000
  python benchmarks/bench_evidence.py figure docs/evidence.png

Classification is regression on centered one-hot targets for every model
(KernelClassifier's protocol; scikit-learn's GPs get the same targets via
GaussianProcessRegressor) so that the comparison is of kernels only.
Train sets are subsampled (n_train below) to keep the run modest.
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import datasets
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import (RBF, ConstantKernel, Matern,
                                              WhiteKernel)
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from widenets.hyperparameters import (dense_network, evidence_fn,
                                      evidence_grid, fit_hyperparameters,
                                      from_spec)
from widenets.sklearn import KernelClassifier, KernelRegressor

SETS = {"diabetes": (datasets.load_diabetes, "reg", 200),
        "digits": (datasets.load_digits, "clf", 200),
        "breast_cancer": (datasets.load_breast_cancer, "clf", 200),
        "wine": (datasets.load_wine, "clf", 120)}
_AFFINE = "Dense(512, W_std={w!r}, b_std={b!r})"
_SPEC = " Relu ".join([_AFFINE] * 3)       # DEFAULT_ARCHITECTURE's shape
STEPS = 80          # Adam steps of the fit (the estimator's default is 200)


def _split(name):
  load, kind, n_train = SETS[name]
  x, y = load(return_X_y=True)
  xtr, xte, ytr, yte = train_test_split(
      x, y, train_size=n_train, random_state=0,
      stratify=y if kind == "clf" else None)
  scaler = StandardScaler().fit(xtr)
  xtr, xte = scaler.transform(xtr), scaler.transform(xte)
  if kind == "reg":
    mu, sd = ytr.mean(), ytr.std()
    ytr, yte = (ytr - mu) / sd, (yte - mu) / sd
  return kind, xtr, xte, ytr, yte


def _error(kind, pred, yte):
  if kind == "reg":
    return float(np.mean((pred - yte)**2))     # standardized MSE
  return float(np.mean(pred != yte))           # misclassification rate


def _sklearn_gp(kind, base, xtr, xte, ytr, yte):
  if kind == "reg":
    targets = ytr
  else:
    classes = np.unique(ytr)
    targets = (ytr[:, None] == classes).astype(float) - 1 / len(classes)
  kern = ConstantKernel() * base + WhiteKernel(0.1)
  gp = GaussianProcessRegressor(kern, normalize_y=False).fit(xtr, targets)
  mean = gp.predict(xte)
  pred = mean if kind == "reg" else classes[np.argmax(mean, axis=1)]
  return _error(kind, pred, yte)


def table():
  rows = []
  for name in SETS:
    kind, xtr, xte, ytr, yte = _split(name)
    est_cls = KernelRegressor if kind == "reg" else KernelClassifier
    row = {"set": f"{name} ({len(xtr)}/{len(xte)})"}
    for get in ("nngp", "ntk"):
      est = est_cls(kernel=get).fit(xtr, ytr)
      row[get] = _error(kind, est.predict(xte), yte)
      # What fit_hyperparameters=True does, with fewer Adam steps.
      t = time.time()
      targets = est.targets_
      build, init = from_spec(_SPEC.format(w=1.5, b=0.05))
      res = fit_hyperparameters(build, init, xtr, targets, get=get,
                                noise=0.1 * float(np.mean(targets**2)),
                                steps=STEPS, learning_rate=0.1)
      spec = _SPEC.format(w=res.values["W_std"], b=res.values["b_std"])
      est = est_cls(spec, kernel=get, diag_reg=res.noise,
                    diag_reg_absolute_scale=True).fit(xtr, ytr)
      row[f"{get} fitted"] = _error(kind, est.predict(xte), yte)
      row[f"{get} fitted hp"] = dict(res.values, noise=res.noise)
      print(name, get, f"fit {time.time() - t:.1f}s", flush=True)
    row["RBF GP"] = _sklearn_gp(kind, RBF(), xtr, xte, ytr, yte)
    row["Matern GP"] = _sklearn_gp(kind, Matern(nu=2.5), xtr, xte, ytr, yte)
    rows.append(row)
    print(row, flush=True)
  cols = ["nngp", "nngp fitted", "ntk", "ntk fitted", "RBF GP", "Matern GP"]
  print("| set (train/test) | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for r in rows:
    print(f"| {r['set']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
  for r in rows:
    print(r["set"], "nngp", r["nngp fitted hp"], "ntk", r["ntk fitted hp"])


def timing(n=2000, d=10, repeats=3):
  rng = np.random.RandomState(0)
  x, y = rng.randn(n, d), rng.randn(n)
  build = dense_network(3)
  with jax.enable_x64(True):
    f = jax.jit(jax.value_and_grad(evidence_fn(build, None, None),
                                   argnums=(0, 1)))
    hp = {"W_std": 1.5, "b_std": 0.1}
    x, y = jnp.asarray(x), jnp.asarray(y)
    t = time.time()
    jax.block_until_ready(f(hp, 0.1, x, y))
    compile_s = time.time() - t
    times = []
    for _ in range(repeats):
      t = time.time()
      jax.block_until_ready(f(hp, 0.1, x, y))
      times.append(time.time() - t)
  gp = GaussianProcessRegressor(ConstantKernel() * RBF() + WhiteKernel(0.1),
                                optimizer=None).fit(x, y)
  theta = gp.kernel_.theta
  sk = []
  for _ in range(repeats):
    t = time.time()
    gp.log_marginal_likelihood(theta, eval_gradient=True)
    sk.append(time.time() - t)
  print(f"N={n}: widenets LML+grad (depth-3 ReLU NNGP, 3 hyperparameters) "
        f"min {min(times):.3f}s median {np.median(times):.3f}s (compile "
        f"{compile_s:.1f}s); sklearn RBF LML+grad (3 hyperparameters) min "
        f"{min(sk):.3f}s median {np.median(sk):.3f}s")


def figure(path="docs/evidence.png", n_grid=9):
  """Evidence landscape of a depth-4 ReLU network on diabetes + test error."""
  from widenets import plot
  kind, xtr, xte, ytr, yte = _split("diabetes")
  xtr, ytr = xtr[:120], ytr[:120]
  build = dense_network(4)
  res = fit_hyperparameters(build, {"W_std": 0.7, "b_std": 2.0}, xtr, ytr,
                            noise=0.5, steps=100, learning_rate=0.08)
  w = np.geomspace(0.4, 3.0, int(n_grid))
  b = np.geomspace(0.02, 4.0, int(n_grid))
  ev = evidence_grid(build, xtr, ytr, w, b, noise=res.noise)

  @jax.jit
  def test_mse(wi, bj, xtr, ytr, xte, yte):
    kernel_fn = build({"W_std": wi, "b_std": bj})[2]
    k = kernel_fn(xtr, None, "nngp")
    kt = kernel_fn(xte, xtr, "nngp")
    a = k + res.noise * jnp.eye(k.shape[0])
    return jnp.mean((kt @ jnp.linalg.solve(a, ytr) - yte)**2)

  with jax.enable_x64(True):
    data = [jnp.asarray(a) for a in (xtr, ytr, xte, yte)]
    err = np.array([[float(test_mse(wi, bj, *data)) for bj in b] for wi in w])
  fig = plot.evidence_landscape(w, b, ev, path=(res.path["W_std"],
                                                res.path["b_std"]),
                                test_error=err)
  plot.save(fig, path)
  i, j = np.unravel_index(np.argmin(err), err.shape)
  k, l = np.unravel_index(np.argmax(ev), ev.shape)
  print(f"fit: {res.values} noise {res.noise:.3g} LML {res.objective:.2f}; "
        f"grid best LML at W_std {w[k]:.2f} b_std {b[l]:.2f}; grid best "
        f"test MSE {err.min():.3f} at W_std {w[i]:.2f} b_std {b[j]:.2f}; "
        f"test MSE at the grid's best LML {err[k, l]:.3f}")


if __name__ == "__main__":
  what = sys.argv[1] if len(sys.argv) > 1 else "table"
  {"table": table, "timing": timing, "figure": figure}[what](*sys.argv[2:])
