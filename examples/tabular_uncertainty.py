"""Kernel regression with uncertainty on a tabular data set (diabetes).

`widenets.sklearn.KernelRegressor` in a scikit-learn pipeline: the NNGP of
a ReLU network as a Gaussian-process prior, ``diag_reg`` as the noise
variance (relative to the prior variance), ``predict(..., return_std=True)``
for error bars. Reports the test RMSE and how often the targets fall within
the 2-sigma predictive interval (ensemble std plus noise).

    python examples/tabular_uncertainty.py [--small]
"""
import argparse
import sys

import numpy as np


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="fewer samples")
  args = p.parse_args(argv)
  from sklearn.datasets import load_diabetes
  from sklearn.model_selection import GridSearchCV, train_test_split
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  from widenets.sklearn import KernelRegressor

  x, y = load_diabetes(return_X_y=True)
  if args.small:
    x, y = x[:150], y[:150]
  y = (y - y.mean()) / y.std()
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3,
                                            random_state=0)
  arch = ("Dense(512, W_std=1.5, b_std=0.05) Relu "
          "Dense(1, W_std=1.5, b_std=0.05)")
  pipe = make_pipeline(StandardScaler(), KernelRegressor(arch, kernel="nngp"))
  grid = GridSearchCV(pipe, {"kernelregressor__diag_reg":
                             [0.1, 0.3, 1.0, 3.0]}, cv=3)
  grid.fit(x_tr, y_tr)
  reg = grid.best_estimator_[-1]
  mean, std = grid.best_estimator_.predict(x_te, return_std=True)
  noise_var = reg.diag_reg * np.mean(np.diagonal(reg.k_train_train_["nngp"]))
  total = np.sqrt(std ** 2 + noise_var)
  rmse = np.sqrt(np.mean((mean - y_te) ** 2))
  inside = np.mean(np.abs(mean - y_te) <= 2 * total)
  print(f"diabetes, {len(y_tr)} train / {len(y_te)} test, NNGP regression "
        f"with diag_reg={reg.diag_reg:g} (chosen by 3-fold CV)")
  print(f"test RMSE {rmse:.3f} (targets standardized; predicting the mean "
        f"gives {np.sqrt(np.mean(y_te ** 2)):.3f})")
  print(f"targets inside the 2-sigma predictive interval: {100 * inside:.0f}%"
        f" (95% expected for a calibrated Gaussian)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
