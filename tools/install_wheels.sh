# shellcheck shell=bash
# Sourced by tools/gpu_smoke.sh and tools/gpu_check.sh (before they cd): with WHEELS set to a folder of
# wheels (e.g. megatron-core 0.19.2, see README "GPU leg"), install them offline into a private folder
# (SITE, default /tmp/megatron-srp-site) and put it first on PYTHONPATH, so a read-only image without
# network works. Then WHEELS is cleared: a script started from the caller does not install them again.
install_wheels() {  # needs PY
  [[ -n "${WHEELS:-}" ]] || return 0
  local wheels site=${SITE:-/tmp/megatron-srp-site}
  wheels=$(cd "$WHEELS" && pwd) || { echo "FAILED: WHEELS=$WHEELS is not a folder"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "FAILED: installing the wheels in $wheels"; return 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export WHEELS=
}
