# Sourced by benchmarks/tl_env.sh and benchmarks/flax4_env.sh (not run on its own): the steps both
# take to build an optional side venv pinned to the main venv's versions.

# main_versions DEFAULT... -- CODE...: one version per line, each printed by `python -c CODE` with
# the main venv's python (benchmarks/../.venv, else $MAIN_PYTHON), or the DEFAULTs when there is
# none.
main_versions() {
  local defaults=() main_py="$here/../.venv/bin/python"
  while [ "$1" != "--" ]; do defaults+=("$1"); shift; done
  shift
  [ -x "$main_py" ] || main_py="${MAIN_PYTHON:-}"
  if [ -n "$main_py" ] && [ -x "$main_py" ]; then
    local code
    for code in "$@"; do "$main_py" -c "$code"; done
  else
    printf '%s\n' "${defaults[@]}"
  fi
}

# make_venv VENV: create VENV with $PYTHON (default python3.11) unless it is there, and upgrade pip.
make_venv() {
  [ -x "$1/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$1"
  "$1/bin/pip" install --quiet --upgrade pip
}
