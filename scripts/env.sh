# Sourced by scripts/demo and scripts/check: a virtualenv in .venv with the project installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for py in python3.11 python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "meter-collector needs Python 3.11 or newer" >&2; return 1
}

# apt-get that waits while another apt-get or dpkg holds its lock (an unattended upgrade, a second
# check) instead of dying at once, for up to APT_LOCK_WAIT seconds (default 600). DPkg::Lock::Timeout
# makes apt wait for the dpkg lock (install), but apt 2.6 (Debian 12) ignores it for the lists lock
# (update) and fails at once: a failure that names a lock is retried until the deadline.
apt_get() {
  local wait="${APT_LOCK_WAIT:-600}" err rc said=""
  local deadline=$((SECONDS + wait))
  err="$(mktemp)"
  while :; do
    rc=0
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout="$((deadline > SECONDS ? deadline - SECONDS : 0))" "$@" 2>"$err" || rc=$?
    if [ "$rc" -ne 0 ] && grep -q "Could not get lock" "$err" && [ "$SECONDS" -lt "$deadline" ]; then
      if [ -z "$said" ]; then
        echo "apt-get $1: waiting up to ${wait} s for another apt-get or dpkg: $(grep -m1 'Could not get lock' "$err")" >&2
        said=1
      fi
      sleep 2
      continue
    fi
    cat "$err" >&2
    rm -f "$err"
    return "$rc"
  done
}

# Debian packages, installed only when missing (apt-get works as root).
apt_install() {
  local missing=()
  for pair in "$@"; do
    local cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: cannot install ${missing[*]} (not root or no apt-get); tests that need them will say so" >&2
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

venv() {  # venv [extras]
  local extras="${1:-}"
  if [ ! -x .venv/bin/python ]; then
    "$(pick_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
}
