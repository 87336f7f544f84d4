#!/usr/bin/env bash
# Builds the real systemd-sysupdate and systemd-pull from Debian's systemd source
# packages (bookworm's 252 and trixie's 257) for the end-to-end suite.
#
# Idempotent and cached: each version lives in $DELTAD_E2E_CACHE/systemd-<major>/
# (default /var/cache/deltad-e2e); when its binaries are there, this costs nothing.
# A fresh machine needs ~1 GB of build dependencies (apt-get build-dep systemd/bookworm,
# which serves both versions) and a few minutes per version on 2 cores (nice'd).
# Binaries run from the build tree; sysupdate finds systemd-pull via SYSTEMD_PULL_PATH.
# Needs root (or sudo) for apt and, by default, for writing /var/cache.
#
# Usage: scripts/build-sysupdate.sh [252|257]...   (default: both)
# Prints nothing on a cache hit; build logs go to <cache>/systemd-<major>/build.log.
set -euo pipefail

CACHE=${DELTAD_E2E_CACHE:-/var/cache/deltad-e2e}
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

suite_of() {
  case $1 in
    252) echo bookworm ;;
    257) echo trixie ;;
    *) echo "build-sysupdate: unknown systemd version $1 (252 or 257)" >&2; exit 2 ;;
  esac
}
built() { [ -x "$CACHE/systemd-$1/build/systemd-sysupdate" ] && [ -x "$CACHE/systemd-$1/build/systemd-pull" ]; }
log() { echo "build-sysupdate: $*" >&2; }

majors=("$@"); [ ${#majors[@]} -gt 0 ] || majors=(252 257)
todo=()
for m in "${majors[@]}"; do suite_of "$m" >/dev/null; built "$m" || todo+=("$m"); done
[ ${#todo[@]} -eq 0 ] && exit 0

# deb-src for bookworm and trixie on the mirror the machine already uses for Debian.
src_list=/etc/apt/sources.list.d/deltad-e2e-src.sources
if [ ! -f "$src_list" ]; then
  mirror=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
    2>/dev/null | head -n1 | tr -d ' ' || true)
  mirror=${mirror%/}
  [ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt/sources.list(.d)"; exit 1; }
  log "adding deb-src for bookworm and trixie from $mirror"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm trixie\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg | $SUDO tee "$src_list" >/dev/null
  $SUDO apt-get update -qq
fi
apt-cache showsrc systemd/trixie >/dev/null 2>&1 || $SUDO apt-get update -qq

# Bookworm's build dependencies serve both versions.
mkdir -p "$CACHE"
if [ ! -f "$CACHE/build-deps.done" ]; then
  log "installing systemd's build dependencies (~1 GB on a fresh machine)"
  $SUDO apt-get build-dep -y -qq systemd/bookworm >"$CACHE/build-deps.log" 2>&1 \
    || { tail -n 30 "$CACHE/build-deps.log" >&2; exit 1; }
  touch "$CACHE/build-deps.done"
fi

# Only what sysupdate and pull need; everything else off to keep the build short.
# 252's options are true/false/auto combos, 257's are meson features.
meson_options() {
  local need=(sysupdate importd fdisk openssl libcurl blkid zlib xz bzip2)
  local off=(seccomp selinux apparmor polkit acl audit kmod pam pwquality microhttpd libcryptsetup
    libcryptsetup-plugins libidn2 libidn libiptc qrencode gcrypt gnutls p11kit libfido2 tpm2 elfutils lz4 zstd
    xkbcommon pcre2 glib dbus homed repart remote nss-mymachines nss-resolve man html)
  MESON_OPTS=(--prefix=/usr -Dmode=release -Dtests=false -Dtranslations=false -Defi=false -Dinstall-tests=false)
  if [ "$1" = 252 ]; then
    MESON_OPTS+=(-Dgnu-efi=false -Dbpf-framework=false)
    for o in "${need[@]}"; do MESON_OPTS+=("-D$o=true"); done
    for o in "${off[@]}"; do MESON_OPTS+=("-D$o=false"); done
  else
    MESON_OPTS+=(--auto-features=disabled -Dsysupdated=disabled)
    for o in "${need[@]}"; do MESON_OPTS+=("-D$o=enabled"); done
  fi
}

for m in "${todo[@]}"; do
  suite=$(suite_of "$m")
  dir="$CACHE/systemd-$m"
  mkdir -p "$dir"
  if [ ! -f "$dir/src/meson.build" ]; then
    log "fetching systemd/$suite source"
    rm -rf "$dir/fetch" "$dir/src"; mkdir -p "$dir/fetch"
    (cd "$dir/fetch" && apt-get source -qq "systemd/$suite" >"$dir/source.log" 2>&1) \
      || { tail -n 20 "$dir/source.log" >&2; exit 1; }
    srcdir=$(find "$dir/fetch" -mindepth 1 -maxdepth 1 -type d -name 'systemd-*' | head -n1)
    [ -n "$srcdir" ] || { log "apt-get source left no systemd-* directory in $dir/fetch"; exit 1; }
    mv "$srcdir" "$dir/src"
    (cd "$dir/fetch" && ls ./*.dsc) | sed 's/\.dsc$//; s/^\.\///' >"$dir/debian-version"
    rm -rf "$dir/fetch"
  fi
  meson_options "$m"
  log "building systemd $m ($(cat "$dir/debian-version")), log in $dir/build.log"
  rm -rf "$dir/build"
  ( cd "$dir/src" && nice -n 10 meson setup "$dir/build" "${MESON_OPTS[@]}" \
      && nice -n 10 ninja -C "$dir/build" systemd-sysupdate systemd-pull ) >"$dir/build.log" 2>&1 \
    || { tail -n 40 "$dir/build.log" >&2; log "systemd $m build failed, see $dir/build.log"; exit 1; }
  built "$m" || { log "systemd $m: build finished without both binaries"; exit 1; }
  log "systemd $m ready in $dir/build"
done
