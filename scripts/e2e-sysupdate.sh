#!/usr/bin/env bash
# The real-systemd-sysupdate end-to-end suite (test-e2e/): Debian's systemd-sysupdate
# and systemd-pull, 252 and 257, updating scratch roots through `deltad serve`, with
# nginx on 127.0.0.1 as the origin and a signed SHA256SUMS. Not part of `npm test`
# (scripts/run-tests.mjs only runs dist/test/).
#
# Builds what is missing first: systemd 252/257 (scripts/build-sysupdate.sh, cached in
# /var/cache/deltad-e2e; ~1 GB of build dependencies and ~10 minutes on a fresh 2-core
# machine, nothing afterwards) and deltad (npm run build). The suite itself takes about
# two minutes. Needs root: sysupdate runs in a private mount namespace that sees the
# test's signing key. Extra arguments go to node's test runner, e.g.
#   scripts/e2e-sysupdate.sh --test-name-pattern='systemd 257'
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
bash scripts/test-deps.sh
need=()
command -v gpg >/dev/null || need+=(gpg)
command -v gpgconf >/dev/null || need+=(gpgconf)
command -v python3 >/dev/null || need+=(python3-minimal)
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "e2e-sysupdate: installing ${need[*]}" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
$SUDO bash scripts/build-sysupdate.sh
npm run build >/dev/null
# The spec reporter lists failures after its summary; repeat the summary so the run ends with it.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The runtime npm ci pinned (as npm scripts use it), whatever node is on PATH.
node=node_modules/.bin/node
[ -x "$node" ] || node=node
"$node" --test --test-reporter=spec "$@" dist/test-e2e/*.test.js 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
if grep -q '^✖ failing tests:' "$log"; then
  echo
  grep -E '^ℹ (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$log" | tail -n 8
fi
exit "$status"
