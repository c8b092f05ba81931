#!/usr/bin/env bash
# neural-tangents 0.6.5's own public-API tests, run against this checkout's widenets.
#
#   bash conformance/run.sh PYTHON [pytest args...]
#
# PYTHON: an interpreter with widenets' dependencies (e.g. .venv/bin/python).
# The tests (tests/) are neural-tangents' files, unchanged (Apache-2.0, see LICENSE).
# They import `neural_tangents`; alias/ provides that name as a thin package that
# re-exports widenets (plus neural-tangents' own generic array helpers,
# alias/neural_tangents/_src/utils/utils.py, which the tests import).
# conftest.py restores the jax.tree_map-style names that the tests call and that
# current JAX removed, and checks the outcomes against expected_failures.txt:
# the run fails on any unexpected failure or unexpected pass.
# NT_NUM_GENERATED_CASES (default 2, as neural-tangents' CI) sets how many
# parameter combinations each parametrized test samples.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
py=${1:?usage: run.sh PYTHON [pytest args]}; shift
# The tests run from a temporary folder: make a relative interpreter path
# absolute (without resolving the venv's symlink, which locates the venv).
case $py in
  */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/tests" "$here/conftest.py" "$here/expected_failures.txt" "$work/"
cp -r "$here/alias/neural_tangents" "$work/"
# absl-py (parameterized tests) and more-itertools are what the tests need beyond
# pytest; use them if installed, else install them beside, not into, the
# interpreter's packages.
overlay=$work/.overlay
if ! "$py" -c 'import absl, more_itertools' >/dev/null 2>&1; then
  "$py" -m pip install -q --target "$overlay" absl-py more-itertools >/dev/null 2>&1 \
    || { echo "conformance: cannot install absl-py and more-itertools" >&2; exit 1; }
fi
cd "$work"
files=${NT_CONFORMANCE_FILES:-"tests/stax tests/predict_test.py tests/monte_carlo_test.py tests/empirical_test.py tests/batching_test.py"}
# The checkout's widenets comes first on the path, ahead of any installed copy.
PYTHONPATH="$work:$repo:$overlay" NT_NUM_GENERATED_CASES=${NT_NUM_GENERATED_CASES:-2} \
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} \
  "$py" -m pytest -p no:cacheprovider --rootdir "$work" $files "$@"
