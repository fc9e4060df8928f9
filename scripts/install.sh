#!/usr/bin/env sh
# One install step for the README, CI and the Docker images: a virtual environment at $1
# (default .venv) holding the project and its pinned dependencies, with extras $2
# (default "dev"; "" installs the runtime only, as the images do).
set -eu
# The pip every install uses, whatever the Python brought (pyproject's [build-system] pins setuptools).
PIP_VERSION=26.3
venv="${1:-.venv}"
extras="${2-dev}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
target="."
[ -z "$extras" ] || target=".[$extras]"
"$venv/bin/python" -m pip install --quiet "pip==$PIP_VERSION"
"$venv/bin/python" -m pip install --quiet -e "$target"
