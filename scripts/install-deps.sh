#!/usr/bin/env bash
# Installs what hubcap needs to build (and, with --ci, to fuzz) on Debian or Ubuntu.
# Installs only what is missing. Without root (and without password-less sudo) it prints
# the exact command to run instead, and exits 1.
set -eu

packages="gcc make cmake libc6-dev pkg-config libpcre2-dev libutf8proc-dev libedit-dev libcurl4-openssl-dev xz-utils"
if [ "${1:-}" = "--ci" ]; then
    packages="$packages clang libclang-rt-dev python3"
fi

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: please install:$missing (apt-get not found)" >&2
    exit 1
fi
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive $cmd
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $cmd
else
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run this as root, then try again:" >&2
    echo "  sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
