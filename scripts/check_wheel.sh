#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel (not editable) into a fresh virtual environment outside the
# checkout, and test the INSTALLED package: `ecgqa quickstart --help`, `ecgqa prepare` on the bundled sample and
# the fast test tier, run from a folder where the checkout's packages are not importable. A package-data file
# missing from the wheel fails here. See docs/distribution.md.
#
# The venv sees the already-installed dependencies (--system-site-packages) and pip runs with --no-index: nothing
# is downloaded, and the check also proves that installing ecgqa leaves the installed torch alone.
#
# Usage: bash scripts/check_wheel.sh [WORKDIR]   (default: a fresh temporary folder, removed at the end)
# Environment: PYTEST_ARGS (default: -m "not slow"), KEEP=1 keeps WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset PYTHONPATH  # the checkout must not leak into the installed package's tests
python=${PYTHON:-python}

work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ecgqa-wheel.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)
case "$work/" in "$repo"/*) echo "error: WORKDIR $work is inside the checkout $repo; choose a folder outside it" >&2; exit 2 ;; esac
if [ -z "${1:-}" ] && [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "build sdist + wheel (the wheel is built from the sdist)"
rm -rf "$work/dist"
"$python" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/ecgqa-*.whl)
ls -l "$work"/dist/

step "fresh venv outside the checkout; install the wheel (no index: every dependency must already be installed)"
torch_before=$("$python" -c 'import torch; print(torch.__version__, torch.__file__)')
rm -rf "$work/venv"
"$python" -m venv --system-site-packages --without-pip "$work/venv"  # pip (and setuptools) from the base: a seeded old setuptools would shadow it
venv_py="$work/venv/bin/python"
"$venv_py" -m pip install -q --no-index "$wheel"
torch_after=$("$venv_py" -c 'import torch; print(torch.__version__, torch.__file__)')
if [ "$torch_before" != "$torch_after" ]; then
  echo "error: installing the wheel changed torch: before [$torch_before], after [$torch_after]" >&2
  exit 1
fi
echo "torch kept: $torch_after"

# A checkout-free copy of what the tests read (tests/, docs, pyproject.toml for the pytest settings), no packages.
run_dir="$work/run"
rm -rf "$run_dir" && mkdir -p "$run_dir"
cp -r tests pyproject.toml README.md LICENSE CITATION.cff "$run_dir"/
[ -d docs ] && cp -r docs "$run_dir"/
[ -d scripts ] && cp -r scripts "$run_dir"/
[ -d benchmarks ] && cp -r benchmarks "$run_dir"/
find "$run_dir" -name __pycache__ -prune -exec rm -rf {} +
cd "$run_dir"
export PATH="$work/venv/bin:$PATH" ECGQA_EXPECT_INSTALLED="$work/venv"

step "the installed package is the one imported"
"$venv_py" - <<'EOF'
import os, sys
import ecgqa, llm_eval, mapping
venv = os.environ["ECGQA_EXPECT_INSTALLED"]
for mod in (ecgqa, llm_eval, mapping):
    if not os.path.realpath(mod.__file__).startswith(os.path.realpath(venv) + os.sep):
        sys.exit(f"error: {mod.__name__} imported from {mod.__file__}, not from the venv {venv}")
print("ecgqa", ecgqa.__version__, "from", os.path.dirname(ecgqa.__file__))
EOF

step "ecgqa quickstart --help"
ecgqa quickstart --help >/dev/null
step "ecgqa prepare (bundled sample)"
ecgqa prepare -q --out "$work/prepared"
test -f "$work/prepared/meta.json"

step "fast test tier against the installed package"
if [ -n "${PYTEST_ARGS:-}" ]; then eval "pytest_args=($PYTEST_ARGS)"; else pytest_args=(-m "not slow"); fi
"$venv_py" -m pytest -q -p no:cacheprovider "${pytest_args[@]}"
step "wheel check passed"
