"""Digits accuracies of FC / CNN / CNN-GAP kernels stay above measured floors.

Measured (300 train / 200 test, seed 0; see docs/results.md): t=inf
FC 96.0 / 97.0, CNN 96.5 / 96.0, CNN-GAP 99.0 / 98.5 (NNGP / NTK).
The floors leave about 3 points of slack (6 test images).
"""
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
from widenets.apps import evaluate as ev  # noqa: E402


def test_small_digits_run_is_far_above_chance():
  data = ev.load_digits(80, 60)
  rows = ev.evaluate({k: ev.DEFAULT_ARCHITECTURES[k] for k in ("FC",
                                                               "CNN-GAP")},
                     data, times=(1000., math.inf))
  acc = {(r.architecture, r.kernel): r.accuracy for r in rows}
  for key, a in acc.items():
    assert a["inf"] >= 0.85, (key, a)  # measured 91.7-96.7%
    assert a["1000"] <= a["inf"] + 0.03  # early stopping is not better here
  md = ev.to_markdown(rows)
  assert md.startswith("| architecture | kernel | t=1000 | t=inf |")
  assert md.count("\n| ") == len(rows)


@pytest.mark.slow
def test_default_digits_floors_and_fc_below_cnn_gap():
  rows = ev.evaluate(data=ev.load_digits(300, 200),
                     times=(1e2, 1e3, 1e4, math.inf))
  acc = {(r.architecture, r.kernel): r.accuracy["inf"] for r in rows}
  floors = {"FC": 0.93, "CNN": 0.93, "CNN-GAP": 0.96}
  for (arch, kernel), a in acc.items():
    assert a >= floors[arch], (arch, kernel, a)
  for kernel in ("nngp", "ntk"):
    assert acc[("FC", kernel)] < acc[("CNN-GAP", kernel)]


def test_one_hot_is_centered():
  t = ev.one_hot(np.array([0, 2]), 3)
  np.testing.assert_allclose(t.sum(1), 0.0, atol=1e-6)
  assert t.argmax(1).tolist() == [0, 2]
