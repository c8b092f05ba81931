"""The documentation site builds with warnings as errors."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_nav_pages_exist():
  yml = (ROOT / "mkdocs.yml").read_text()
  pages = [l.split(":", 1)[1].strip() for l in yml.splitlines()
           if l.strip().startswith("- ") and l.strip().endswith(".md")]
  assert "index.md" in pages and "api.md" in pages
  for page in pages:
    assert (ROOT / "docs" / page).is_file(), page


def test_mkdocs_build_strict(tmp_path):
  pytest.importorskip("mkdocs")
  pytest.importorskip("mkdocstrings")
  r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                      "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-3000:]
  html = (tmp_path / "site" / "api" / "index.html").read_text()
  assert "KernelRegressor" in html and "gradient_descent_mse_ensemble" in html
