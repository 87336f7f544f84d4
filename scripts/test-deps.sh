#!/usr/bin/env bash
# Installs the Debian packages the test suite runs against (real peers and real
# clients): casync, nginx, systemd-pull, zsync, erofs-utils. Idempotent: does
# nothing when everything is present. Needs root (or sudo) to install.
set -euo pipefail
need=()
command -v casync >/dev/null || need+=(casync)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/lib/systemd/systemd-pull ] || [ -x /lib/systemd/systemd-pull ] || need+=(systemd-container)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v zsync >/dev/null || need+=(zsync)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v systemd-dissect >/dev/null || need+=(systemd-container)
command -v curl >/dev/null || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0
echo "test-deps: installing ${need[*]}" >&2
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# nginx-light's postinst may start the system nginx on :80; tests run their own instances.
$SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
