#!/usr/bin/env bash
# Tests the release artifacts (`npm run dist`) the way an administrator uses them:
#   tarball  unpacked into a scratch root; its deltad runs on the bundled Node 24
#   sysext   inspected with systemd-dissect, merged with `systemd-sysext --root=` into a
#            scratch root (in a private mount namespace), deltad run from the merged /usr
#   deb      dpkg -i, the CLI, systemd-analyze verify of the units, dpkg -r, dpkg -P
# Needs root (dpkg, loop devices, mounts). Slower than `npm test`, so .ci/run runs it
# separately. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-dist: needs root (dpkg -i, mounts)" >&2; exit 1; }
bash scripts/test-deps.sh || exit 1
export PATH="$PWD/node_modules/.bin:$PATH"

passed=0 failed=0
ok() { echo "ok - $1"; passed=$((passed + 1)); }
fail() { echo "not ok - $1"; failed=$((failed + 1)); }
# check NAME COMMAND...: passes when the command exits 0.
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
# starts PATTERN COMMAND...: runs the command in the background until its output has a
# line matching PATTERN (at most 20 s), then stops it; fails (printing the output) if none.
starts() {
  local pattern=$1 log pid found=1
  shift
  log=$(mktemp "$SCRATCH/starts.XXXXXX")
  "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    grep -q "$pattern" "$log" && { found=0; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  [ "$found" -eq 0 ] || { cat "$log"; return 1; }
}

VERSION=$(node -p "require('./package.json').version")
RUNTIME_VERSION=v$(node -p "require('./package.json').optionalDependencies['node-linux-' + process.arch]")
WANT="deltad $VERSION"
SCRATCH=$(mktemp -d /var/tmp/deltad-test-dist.XXXXXX)
cleanup() {
  dpkg -s deltad >/dev/null 2>&1 && dpkg -P deltad >/dev/null 2>&1
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

if ! npm run dist --silent >"$SCRATCH/dist.log" 2>&1; then
  cat "$SCRATCH/dist.log"
  fail "npm run dist builds the artifacts"
  echo "$passed passed, $failed failed"
  exit 1
fi
ok "npm run dist builds the artifacts"
OUT=dist-release
TARBALL=$(ls $OUT/deltad-"$VERSION"-linux-*.tar.gz)
DEB=$(ls $OUT/deltad_"$VERSION"_*.deb)
check "SHA256SUMS matches the artifacts" sh -c "cd $OUT && sha256sum --quiet -c SHA256SUMS"

# --- tarball -------------------------------------------------------------------------
T=$SCRATCH/tar
mkdir -p "$T"
tar -C "$T" -xzf "$TARBALL"
check "tarball: usr/bin/deltad --version is package.json's" test "$("$T/usr/bin/deltad" --version)" = "$WANT"
check "tarball: the bundled runtime is $RUNTIME_VERSION" test "$("$T/usr/lib/deltad/node/bin/node" --version)" = "$RUNTIME_VERSION"
# With no node on PATH: the launcher needs only /bin/sh, readlink and dirname.
mkdir -p "$SCRATCH/bin" && ln -s "$(command -v readlink)" "$(command -v dirname)" "$SCRATCH/bin/"
check "tarball: runs with no node on PATH" \
  test "$(env -i PATH="$SCRATCH/bin" /bin/sh "$T/usr/bin/deltad" --version)" = "$WANT"
check "tarball: no dev dependencies, no runtime package in node_modules" sh -c "
  cd '$T/usr/lib/deltad/node_modules' && ! ls -d typescript wabt @types node-linux-* 2>/dev/null | grep -q ."
check "tarball: no native addon" test -z "$(find "$T" -name '*.node' -print -quit)"
check "tarball: the units, docs and examples" test -f "$T/usr/lib/systemd/system/deltad.socket" \
  -a -f "$T/usr/lib/systemd/system/deltad.service" -a -f "$T/usr/lib/systemd/system/deltad-proxy.service" \
  -a -f "$T/usr/share/doc/deltad/CONFIG.md" -a -f "$T/usr/share/doc/deltad/examples/deltad.conf.example"
check "tarball: every unit's commands are /usr/bin/deltad" sh -c "
  grep -h '^Exec' '$T'/usr/lib/systemd/system/deltad* | sed -E 's/^[A-Za-z]+=[-@+!:]*//; s/ .*//' | sort -u | grep -qx /usr/bin/deltad &&
  test \$(grep -h '^Exec' '$T'/usr/lib/systemd/system/deltad* | sed -E 's/^[A-Za-z]+=[-@+!:]*//; s/ .*//' | sort -u | wc -l) -eq 1"
# The installed code works, not just --version: index and store a file, verify the store
# (zstd from node:zlib, the WASM chunker), and load the HTTP commands (fastify, undici).
dd if=/dev/urandom of="$SCRATCH/img" bs=1M count=3 status=none
check "tarball: deltad make --store, verify --store" sh -c "
  '$T/usr/bin/deltad' make --store '$SCRATCH/store' '$SCRATCH/img.caibx' '$SCRATCH/img' >/dev/null &&
  '$T/usr/bin/deltad' verify --store '$SCRATCH/store' '$SCRATCH/img.caibx' >/dev/null"
check "tarball: serve and proxy load their dependencies" sh -c "
  '$T/usr/bin/deltad' serve --help >/dev/null && '$T/usr/bin/deltad' proxy --help >/dev/null"

# --- systemd-sysext image ------------------------------------------------------------
RAW=$OUT/deltad.raw
dissect=$(systemd-dissect "$RAW" 2>&1)
check "sysext: systemd-dissect reads an erofs image with extension-release ID=_any" sh -c "
  printf '%s\n' \"\$1\" | grep -q 'Ext. Rel.: ID=_any' && printf '%s\n' \"\$1\" | grep -q 'erofs' &&
  printf '%s\n' \"\$1\" | grep -q '✓ extension for system'" _ "$dissect"
check "sysext: systemd-dissect --copy-from: /usr only, and its deltad runs" sh -c "
  systemd-dissect --copy-from '$RAW' / '$SCRATCH/sysext-copy' >/dev/null &&
  test \"\$(ls -A '$SCRATCH/sysext-copy')\" = usr &&
  test \"\$('$SCRATCH/sysext-copy/usr/bin/deltad' --version)\" = '$WANT'"
# A scratch root: its own os-release, the image in its /var/lib/extensions. systemd-sysext
# moves its overlay into the root from a forked mount namespace, so the root must be a
# shared mount, and it expects /run to be a mount point: both are set up in a private
# namespace here, so nothing of it reaches the host.
R=$SCRATCH/root
mkdir -p "$R/usr/lib" "$R/var/lib/extensions" "$R/etc"
cp /etc/os-release "$R/usr/lib/os-release"
cp "$RAW" "$R/var/lib/extensions/deltad.raw"
merged=$(unshare -m --propagation private sh -c "
  set -e
  mount --bind /run /run
  mount --bind '$R' '$R' && mount --make-shared '$R'
  systemd-sysext --root='$R' merge >/dev/null 2>&1
  '$R/usr/bin/deltad' --version
  test -f '$R/usr/lib/systemd/system/deltad.socket' && echo units
  test -f '$R/usr/lib/extension-release.d/extension-release.deltad' && echo release
  systemd-sysext --root='$R' unmerge >/dev/null 2>&1
  test ! -e '$R/usr/bin/deltad' && echo unmerged
" 2>&1)
check "sysext: merged into a scratch root, its deltad --version is package.json's" \
  sh -c 'printf "%s\n" "$1" | grep -qx "$2"' _ "$merged" "$WANT"
check "sysext: the merged /usr has the units and extension-release.deltad" \
  sh -c 'printf "%s\n" "$1" | grep -qx units && printf "%s\n" "$1" | grep -qx release' _ "$merged"
check "sysext: unmerge takes it away again" sh -c 'printf "%s\n" "$1" | grep -qx unmerged' _ "$merged"
[ "$failed" -eq 0 ] || printf 'merge output:\n%s\n' "$merged"

# --- Debian package ------------------------------------------------------------------
if dpkg -s deltad >/dev/null 2>&1; then
  fail "deb: a deltad package is already installed on this machine; not touching it"
else
  check "deb: metadata (Package, Version, Depends)" sh -c "
    dpkg-deb -f '$DEB' Package Version Depends | grep -qx 'Package: deltad' &&
    dpkg-deb -f '$DEB' Version | grep -qx '$VERSION'"
  check "deb: dpkg -i installs it" sh -c "dpkg -i '$DEB' >'$SCRATCH/dpkg.log' 2>&1 || { cat '$SCRATCH/dpkg.log'; false; }"
  check "deb: deltad --version is package.json's" test "$(deltad --version 2>&1)" = "$WANT"
  check "deb: /usr/bin/deltad runs the bundled runtime" \
    test "$(readlink -f /usr/bin/deltad)" = /usr/lib/deltad/bin/deltad
  check "deb: config examples in /etc/deltad, conffiles" sh -c "
    test -f /etc/deltad/deltad.conf.example && test -f /etc/deltad/proxy.conf.example &&
    dpkg-query -W -f='\${Conffiles}' deltad | grep -q /etc/deltad/deltad.conf.example"
  # systemd-analyze verify checks the unit files' syntax and that their commands exist.
  check "deb: systemd-analyze verify of the three units" systemd-analyze verify \
    /usr/lib/systemd/system/deltad.socket /usr/lib/systemd/system/deltad.service /usr/lib/systemd/system/deltad-proxy.service
  # What the units run, with the shipped examples as configuration, on loopback port 0.
  check "deb: deltad serve starts with deltad.conf.example" starts \
    '^deltad serving 127.0.0.1:[0-9]*; origin https://updates.example.org/' \
    /usr/bin/deltad serve --config /etc/deltad/deltad.conf.example --listen 127.0.0.1:0 \
    --cache-dir "$SCRATCH/cache" --seed-glob "$SCRATCH/no-seeds/*.img"
  check "deb: deltad proxy starts with proxy.conf.example" starts \
    '^deltad proxy on 127.0.0.1:[0-9]*; upstream https://updates.example.org/' \
    /usr/bin/deltad proxy --config /etc/deltad/proxy.conf.example --listen 127.0.0.1:0 --proxy-cache "$SCRATCH/proxy-cache"
  check "deb: dpkg -r removes the program, keeps the conffiles" sh -c "
    dpkg -r deltad >/dev/null 2>&1 && test ! -e /usr/bin/deltad && test ! -e /usr/lib/deltad &&
    test -f /etc/deltad/deltad.conf.example"
  check "deb: dpkg -P removes the conffiles and the state" sh -c "
    dpkg -P deltad >/dev/null 2>&1 && test ! -e /etc/deltad && test ! -e /var/cache/private/deltad"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
