#!/usr/bin/env bash
# Makes a distroless-style runtime base image for the `metastore` binary without a registry:
# exactly the shared libraries the given binaries load (glibc's loader, libc, libm, libgcc_s,
# as installed from Debian's packages on this host, the same ones the binary was linked
# against), a passwd/group with the `nonroot` user (65532, as distroless's), nsswitch.conf and
# a /tmp, packed with `docker import`. No shell, no package manager.
#
#   deploy/base/make-base.sh TAG BINARY...
set -euo pipefail
tag=${1:?usage: make-base.sh TAG BINARY...}
shift
[ $# -gt 0 ] || { echo "make-base.sh: name at least one binary" >&2; exit 2; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"

# Every library the binaries load, at the path the loader looks for it.
libs=$(for bin in "$@"; do ldd "$bin"; done |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

# Where each file came from, for whoever audits the image.
{
  echo "# files of this base and the Debian packages they belong to (dpkg -S on the build host)"
  for lib in $libs; do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | cut -d: -f1-2 | head -n1 || true)
    ver=$( [ -n "$pkg" ] && dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    echo "$lib ${pkg:-unknown} ${ver:-}"
  done
} > "$root/etc/metastore-base.txt"

tar -C "$root" --numeric-owner -c . |
  docker import \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'LABEL org.metastore.base=host-libs' \
    - "$tag" >/dev/null
echo "made $tag from: $(echo $libs)"
