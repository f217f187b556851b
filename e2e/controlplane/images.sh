#!/usr/bin/env bash
# Builds the node suite's container images as one OCI image-layout archive, with
# no registry and no Docker: a single layer holding Debian's static busybox (with
# its applet links) and a passwd/group pair, under several image configs that
# differ only in USER. The archive is what `ctr images import` takes.
#
#   e2e/controlplane/images.sh OUT.tar [KUBE_HARDENER_BIN]
#                                          # prints the image names on stdout
#
# Images (all `imagePullPolicy: Never` in the tests):
#   kh.test/pause:1          the pod sandbox (containerd's sandbox_image)
#   kh.test/busybox:root     USER unset, so root
#   kh.test/busybox:zero     USER 0
#   kh.test/busybox:uid65532 USER 65532
#   kh.test/busybox:named    USER app (uid 10001 in the image's /etc/passwd)
#   kh.test/kube-hardener:e2e  with KUBE_HARDENER_BIN: that binary, the shared
#                            libraries it links (as ldd finds them here), CA
#                            certificates and a passwd entry for 65532; USER
#                            65532:65532, as the Dockerfile's image
set -euo pipefail

log() { printf '[controlplane/images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 || $# -eq 2 ]] || die "usage: $0 OUT.tar [KUBE_HARDENER_BIN]"
out="$1"
hardener_bin="${2:-}"
if [[ -n "$hardener_bin" ]]; then
    [[ -x "$hardener_bin" ]] || die "$hardener_bin is not an executable"
    command -v ldd >/dev/null 2>&1 || die "ldd is needed to find the libraries of $hardener_bin"
fi
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

# layer ROOTFS: the one layer of the images that follow, in $layer and
# $diff_id. Reproducible: same bytes on every run, so the digests are stable.
layer() {
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf "$work/layer.tar" .
    diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
    layer="$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)"
}

manifests=()
# image NAME USER CMD_JSON [ENTRYPOINT_JSON]: an image of the current layer.
image() {
    local name="$1" user="$2" cmd="$3" entrypoint="${4:-null}" config manifest
    printf '{"architecture":"%s","os":"linux","config":{"User":"%s","Env":["PATH=/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$arch" "$user" "$entrypoint" "$cmd" "$diff_id" >"$work/config.json"
    config="$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
        "$config" "$layer" >"$work/manifest.json"
    manifest="$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"
    manifests+=("${manifest%\}},\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}")
    echo "$name"
}

layer "$rootfs"
image kh.test/pause:1 "" '["sleep","2147483647"]'
image kh.test/busybox:root "" '["sh"]'
image kh.test/busybox:zero "0" '["sh"]'
image kh.test/busybox:uid65532 "65532" '["sh"]'
image kh.test/busybox:named "app" '["sh"]'

if [[ -n "$hardener_bin" ]]; then
    hardener="$work/hardener"
    mkdir -p "$hardener/usr/local/bin" "$hardener/etc/ssl/certs" "$hardener/tmp"
    install -m 0755 "$hardener_bin" "$hardener/usr/local/bin/kube-hardener"
    # Every library at the path the dynamic loader looks for it (the loader
    # itself included), as regular files.
    for lib in $(ldd "$hardener_bin" | grep -o '/[^ ]*'); do
        mkdir -p "$hardener$(dirname "$lib")"
        cp -L "$lib" "$hardener$lib"
    done
    [[ -e "$hardener/lib64/ld-linux-x86-64.so.2" || -e "$hardener/lib/ld-linux-aarch64.so.1" ]] ||
        die "ldd named no dynamic loader for $hardener_bin"
    # For image lookups over TLS (images.resolve).
    [[ -e /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$hardener/etc/ssl/certs/"
    chmod 1777 "$hardener/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$hardener/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$hardener/etc/group"
    layer "$hardener"
    image kh.test/kube-hardener:e2e "65532:65532" '["serve"]' '["/usr/local/bin/kube-hardener"]'
fi

printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
(IFS=,; printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${manifests[*]}") \
    >"$layout/index.json"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out.partial" oci-layout index.json blobs
mv -f "$out.partial" "$out"
log "wrote $out"
