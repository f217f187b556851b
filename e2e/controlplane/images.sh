#!/usr/bin/env bash
# Builds the node suite's container images as one OCI image-layout archive, with
# no registry and no Docker: a single layer holding Debian's static busybox (with
# its applet links) and a passwd/group pair, under several image configs that
# differ only in USER. The archive is what `ctr images import` takes.
#
#   e2e/controlplane/images.sh OUT.tar     # prints the image names on stdout
#
# Images (all `imagePullPolicy: Never` in the tests):
#   kh.test/pause:1          the pod sandbox (containerd's sandbox_image)
#   kh.test/busybox:root     USER unset, so root
#   kh.test/busybox:zero     USER 0
#   kh.test/busybox:uid65532 USER 65532
#   kh.test/busybox:named    USER app (uid 10001 in the image's /etc/passwd)
set -euo pipefail

log() { printf '[controlplane/images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUT.tar"
out="$1"
busybox="${KUBE_HARDENER_BUSYBOX:-/bin/busybox}"
[[ -x "$busybox" ]] || die "$busybox not found: install Debian's busybox-static"
# A dynamically linked busybox would need its libraries inside the image.
if ! "$busybox" --list >/dev/null 2>&1 || ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is not a static busybox (install Debian's busybox-static)"
fi

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m)" ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/kube-hardener-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
layout="$work/layout"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$layout/blobs/sha256"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
# Relative links, so they work wherever the layer is unpacked.
for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
done
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001:app:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\napp:x:10001:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

# blob FILE MEDIA_TYPE: stores FILE under its digest, prints a descriptor.
blob() {
    local file="$1" media_type="$2" digest size
    digest="$(sha256sum "$file" | cut -d' ' -f1)"
    size="$(stat -c %s "$file")"
    mv -f "$file" "$layout/blobs/sha256/$digest"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$media_type" "$digest" "$size"
}

# Reproducible: same bytes on every run, so the digests are stable.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$work/layer.tar" .
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
layer="$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)"

manifests=()
# image NAME USER CMD_JSON
image() {
    local name="$1" user="$2" cmd="$3" config manifest
    printf '{"architecture":"%s","os":"linux","config":{"User":"%s","Env":["PATH=/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$arch" "$user" "$cmd" "$diff_id" >"$work/config.json"
    config="$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
        "$config" "$layer" >"$work/manifest.json"
    manifest="$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"
    manifests+=("${manifest%\}},\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}")
    echo "$name"
}

image kh.test/pause:1 "" '["sleep","2147483647"]'
image kh.test/busybox:root "" '["sh"]'
image kh.test/busybox:zero "0" '["sh"]'
image kh.test/busybox:uid65532 "65532" '["sh"]'
image kh.test/busybox:named "app" '["sh"]'

printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
(IFS=,; printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${manifests[*]}") \
    >"$layout/index.json"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out.partial" oci-layout index.json blobs
mv -f "$out.partial" "$out"
log "wrote $out"
