#!/usr/bin/env bash
# Builds the local images the demo and the tests use, with no internet beyond the Debian mirror,
# cached in $HUTCH_CACHE_DIR (default /var/cache/hutch) outside the repository.
#   scripts/images.sh busybox   -> $CACHE/busybox.tar            (busybox-static, ~2 MB)
#   scripts/images.sh python    -> $CACHE/debian-python-3.11.tar (mmdebstrap bookworm + python3)
#   scripts/images.sh postgres  -> $CACHE/debian-postgres-redis.tar (bookworm + PostgreSQL 15, Redis)
set -euo pipefail
CACHE=${HUTCH_CACHE_DIR:-/var/cache/hutch}
mkdir -p "$CACHE"

busybox() {
  local out="$CACHE/busybox.tar"
  [ -s "$out" ] && return 0
  local d; d=$(mktemp -d)
  mkdir -p "$d"/{bin,etc,tmp,root,home/user}
  cp /bin/busybox "$d/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$d/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$d/etc/passwd"
  printf 'root:x:0:\n' > "$d/etc/group"
  chmod 1777 "$d/tmp"
  tar -C "$d" --numeric-owner -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$d"
  echo "built $out"
}

python() {
  local out="$CACHE/debian-python-3.11.tar"
  [ -s "$out" ] && return 0
  echo "building a Debian bookworm root filesystem with python3 (once; cached in $out)..."
  mmdebstrap --quiet --variant=minbase --include=python3,python-is-python3 --mode=root \
    --format=tar bookworm "$out.tmp"
  mv "$out.tmp" "$out"
  echo "built $out"
}

postgres() {
  local out="$CACHE/debian-postgres-redis.tar"
  [ -s "$out" ] && return 0
  echo "building a Debian bookworm root filesystem with PostgreSQL 15 and Redis (once; cached in $out)..."
  mmdebstrap --quiet --variant=minbase --include=postgresql,redis-server --mode=root \
    --format=tar bookworm "$out.tmp"
  mv "$out.tmp" "$out"
  echo "built $out"
}

for what in "$@"; do "$what"; done
