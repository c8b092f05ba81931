"""scikit-learn estimators: the estimator contract, pipelines, uncertainty."""
import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa

from widenets import stax  # noqa: E402
from widenets.sklearn import KernelClassifier, KernelRegressor  # noqa: E402

SMALL = "Dense(64, W_std=1.5, b_std=0.05) Relu Dense(1, W_std=1.5, b_std=0.05)"


@parametrize_with_checks([KernelRegressor(SMALL), KernelClassifier(SMALL)])
def test_sklearn_estimator_checks(estimator, check):
  check(estimator)


def _blobs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 3
  x = rng.standard_normal((n, 4)) + 4.0 * np.eye(3, 4)[y]
  return x, y


def test_classifier_in_pipeline_and_grid_search():
  x, y = _blobs()
  pipe = make_pipeline(StandardScaler(), KernelClassifier(SMALL))
  grid = GridSearchCV(pipe, {"kernelclassifier__kernel": ["nngp", "ntk"],
                             "kernelclassifier__t": [None, 100.0]}, cv=3)
  grid.fit(x[:45], y[:45])
  assert grid.best_score_ > 0.8
  assert grid.score(x[45:], y[45:]) > 0.8
  proba = grid.predict_proba(x[45:])
  np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
  assert (proba.argmax(1) == grid.predict(x[45:])).all()


def test_regressor_std_grows_away_from_data_and_vanishes_on_it():
  x = np.linspace(-2, 2, 8)[:, None]
  y = np.sin(x[:, 0])
  reg = KernelRegressor(SMALL, diag_reg=0.0).fit(x, y)
  mean, std = reg.predict(np.array([[0.3], [6.0]]), return_std=True)
  assert mean.shape == std.shape == (2,)
  assert 0 < std[0] < std[1]
  _, std_train = reg.predict(x, return_std=True)
  assert std_train.max() < 1e-2 * std[1]
  assert reg.score(x, y) > 0.999  # t = inf interpolates


def test_finite_time_is_between_prior_and_interpolation():
  x = np.linspace(-2, 2, 8)[:, None]
  y = np.sin(2 * x[:, 0])
  errs = [np.abs(KernelRegressor(SMALL, t=t).fit(x, y).predict(x) - y).max()
          for t in (1.0, 100.0, None)]
  assert errs[0] > errs[1] > errs[2]


def test_stax_triple_equals_spec_and_multioutput_std_shape():
  x = np.random.default_rng(1).standard_normal((10, 3))
  y = np.stack([x[:, 0], x[:, 1] ** 2], 1)
  triple = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Dense(1, W_std=1.5, b_std=0.05))
  a = KernelRegressor(SMALL).fit(x, y)
  b = KernelRegressor(triple).fit(x, y)
  mean, std = b.predict(x[:4] + 0.1, return_std=True)
  np.testing.assert_allclose(a.predict(x[:4] + 0.1), mean, rtol=1e-6)
  assert mean.shape == std.shape == (4, 2)


def test_cnn_on_flattened_images_via_input_shape():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((12, 16))
  y = np.arange(12) % 2
  clf = KernelClassifier("Conv(8,(3,3),SAME) Relu GlobalAvgPool Dense(1)",
                         input_shape=(4, 4, 1)).fit(x, y)
  assert clf.predict_proba(x).shape == (12, 2)
  assert (clf.predict(x) == y).all()
  with pytest.raises(ValueError, match="input_shape"):
    KernelClassifier("Dense(1)", input_shape=(3, 3, 1)).fit(x, y)


@pytest.mark.parametrize("kw, match", [({"kernel": "rbf"}, "kernel"),
                                       ({"t": -1.0}, "t must be"),
                                       ({"diag_reg": -1}, "diag_reg")])
def test_bad_parameters_are_rejected_at_fit(kw, match):
  with pytest.raises(ValueError, match=match):
    KernelRegressor(SMALL, **kw).fit(np.ones((3, 2)), np.ones(3))
