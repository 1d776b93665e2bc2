#!/usr/bin/env bash
# Assembles the container image's root filesystem in OUT: the stackpass
# binary, exactly the C runtime libraries it is linked against (what ldd
# names, copied as files to the paths ldd names), and Debian's CA bundle,
# which the AWS SDK reads (rustls-native-certs). Nothing else: no shell, no
# package manager, no /etc/passwd (the image runs as a numeric UID).
# Used by deploy/Containerfile's build stage and by scripts/build-image.
#
#   deploy/rootfs.sh BINARY OUT
#
# STRIP=1 removes debug information from the copied binary (a debug build's
# is most of its size); the binary given is left alone.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 BINARY OUT" >&2
  exit 2
fi
binary=$1
out=$2
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -x "$binary" ] || { echo "$binary: not an executable" >&2; exit 1; }
[ -f "$ca" ] || { echo "$ca: no CA bundle (install Debian's ca-certificates)" >&2; exit 1; }
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "$out: not empty" >&2
  exit 1
fi

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs"
cp "$binary" "$out/usr/local/bin/stackpass"
if [ "${STRIP:-0}" = 1 ]; then
  strip --strip-debug "$out/usr/local/bin/stackpass"
fi
chmod 0555 "$out/usr/local/bin/stackpass"

# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" for
# libraries, "/lib64/ld-linux-x86-64.so.2 (0x…)" for the dynamic loader,
# "linux-vdso.so.1 (0x…)" for the kernel's (no file). A static binary has none.
if libraries=$(ldd "$binary" 2>/dev/null); then
  if grep -q "not found" <<<"$libraries"; then
    echo "$binary: a library is missing:" >&2
    grep "not found" <<<"$libraries" >&2
    exit 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libraries" |
    while read -r library; do
      mkdir -p "$out$(dirname "$library")"
      cp -L "$library" "$out$library"
      chmod 0555 "$out$library" # the loader must be executable
    done
else
  echo "$binary: statically linked, no libraries to copy" >&2
fi

cp "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
chmod 0444 "$out/etc/ssl/certs/ca-certificates.crt"
