#!/usr/bin/env bash
# Local stand-ins for the two base images the Dockerfile names, in buildah's storage under exactly
# the names of its FROM lines, for machines without a container registry (`make image` runs this).
# Both are made from Debian bookworm packages with mmdebstrap:
# - the builder (rust:X.Y-bookworm): Debian with apt, a C toolchain and CA certificates, plus this
#   machine's Rust toolchain (which must be version X.Y) laid out as in the official image
#   (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, cargo on PATH);
# - the runtime (gcr.io/distroless/cc-debian12:nonroot): what distroless `cc` holds that the
#   binary uses, taken from the packages' files as distroless does (no maintainer scripts): glibc,
#   libgcc_s, the CA bundle, tzdata, netbase, /etc/passwd and /etc/group with root, nobody and
#   nonroot (65532). No shell, no package manager. Distroless `cc` also carries libstdc++,
#   libgomp and libssl, which the binary does not link; leaving them out makes the image test
#   fail if it ever starts to.
# An image is rebuilt only when its inputs change (this script, the Rust toolchain); set
# BASE_IMAGES_REBUILD=1 to rebuild anyway (e.g. for Debian's security updates).
set -euo pipefail
self=$(readlink -f "${BASH_SOURCE[0]}")
cd "$(dirname "$self")/.."
export PATH="$PATH:$HOME/.cargo/bin"

mapfile -t bases < <(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\1/p' Dockerfile)
if ((${#bases[@]} != 2)); then
	echo "[base-images] expected two FROM lines in the Dockerfile, found: ${bases[*]}" >&2
	exit 1
fi
builder_ref=${bases[0]}
runtime_ref=${bases[1]}
[[ $builder_ref == rust:*-bookworm ]] || { echo "[base-images] unexpected builder $builder_ref" >&2; exit 1; }
[[ $runtime_ref == gcr.io/distroless/cc-debian12:nonroot ]] || { echo "[base-images] unexpected runtime $runtime_ref" >&2; exit 1; }

# Debian sources: this machine's own apt sources (a bookworm mirror reachable from here), each file
# given to mmdebstrap as it is (one-line or deb822); without any, mmdebstrap's default mirrors.
mirrors=()
for list in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	if [[ -s $list ]]; then mirrors+=("$list"); fi
done
label=dev.kubeconfig-operator.stand-in-inputs
scratch=$(mktemp -d "${TMPDIR:-/tmp}/base-images.XXXXXX")
containers=()
cleanup() {
	local c
	for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
	rm -rf "$scratch"
}
trap cleanup EXIT

# Prints nothing and returns 0 when the image exists with these inputs.
current() {
	local ref=$1 inputs=$2 have
	[[ -z ${BASE_IMAGES_REBUILD:-} ]] || return 1
	have=$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$ref" 2>/dev/null) || return 1
	[[ $have == "$inputs" ]]
}

# A new container from scratch, mounted; sets $ctr and $root.
new_container() {
	ctr=$(buildah from scratch)
	containers+=("$ctr")
	root=$(buildah mount "$ctr")
}

# Commits the container as $ref; the image that had the name before goes, unless it is in use.
commit() {
	local ref=$1 inputs=$2 old
	old=$(buildah images --noheading --format '{{.ID}}' "$ref" 2>/dev/null || true)
	buildah config --label "$label=$inputs" "$ctr"
	buildah unmount "$ctr" >/dev/null
	buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
	containers=("${containers[@]/$ctr/}")
	[[ -z $old ]] || buildah rmi "$old" >/dev/null 2>&1 || true
	echo "[base-images] $ref: $(buildah images --noheading --format '{{.ID}}' "$ref")" >&2
}

# ---- the builder --------------------------------------------------------------------------------
want=${builder_ref#rust:}
want=${want%-bookworm}
rust_version=$(rustc --version | awk '{print $2}')
if [[ $rust_version != "$want" && $rust_version != "$want".* ]]; then
	echo "[base-images] the Dockerfile builds with Rust $want, this machine's rustc is $rust_version" >&2
	exit 1
fi
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
builder_packages=ca-certificates,gcc,g++,libc6-dev,make,pkg-config
builder_inputs=$( { sha256sum <"$self"; rustc -vV; cargo -V; echo "$builder_packages"; } | sha256sum | cut -c1-16)
if current "$builder_ref" "$builder_inputs"; then
	echo "[base-images] $builder_ref is current" >&2
else
	echo "[base-images] building $builder_ref: Debian bookworm ($builder_packages) + Rust $rust_version" >&2
	new_container
	mmdebstrap --quiet --variant=apt --include="$builder_packages" bookworm "$root" "${mirrors[@]}"
	# The toolchain without its documentation (share/), as rustup's minimal profile installs it.
	toolchain=/usr/local/rustup/toolchains/$rust_version-$host
	mkdir -p "$root$toolchain" "$root/usr/local/cargo/bin"
	tar -C "$sysroot" -c bin lib libexec | tar -C "$root$toolchain" -x
	for tool in "$root$toolchain"/bin/*; do
		ln -s "$toolchain/bin/${tool##*/}" "$root/usr/local/cargo/bin/${tool##*/}"
	done
	buildah config \
		--env RUSTUP_HOME=/usr/local/rustup \
		--env CARGO_HOME=/usr/local/cargo \
		--env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env RUST_VERSION="$rust_version" \
		--cmd bash \
		"$ctr"
	commit "$builder_ref" "$builder_inputs"
fi

# ---- the runtime --------------------------------------------------------------------------------
runtime_packages=(libc6 libgcc-s1 ca-certificates tzdata netbase base-files)
runtime_inputs=$( { sha256sum <"$self"; echo "${runtime_packages[*]}"; } | sha256sum | cut -c1-16)
if current "$runtime_ref" "$runtime_inputs"; then
	echo "[base-images] $runtime_ref is current" >&2
else
	echo "[base-images] building $runtime_ref: ${runtime_packages[*]} (files only)" >&2
	# The extract variant downloads the packages (with their dependencies) and unpacks them into a
	# throw-away root; only the .deb files it keeps are used, for the selection below.
	mmdebstrap --quiet --variant=extract --include="$(IFS=,; echo "${runtime_packages[*]}")" \
		--skip=cleanup/apt/cache bookworm "$scratch/extract" "${mirrors[@]}"
	deb() { local f; f=$(compgen -G "$scratch/extract/var/cache/apt/archives/${1}_*.deb" | head -n1); [[ -n $f ]] || { echo "[base-images] no .deb for $1" >&2; exit 1; }; echo "$f"; }
	# unpack PACKAGE [MEMBER...]: the package's files (or only MEMBERs) into the image, without
	# documentation.
	unpack() {
		local pkg=$1
		shift
		dpkg-deb --fsys-tarfile "$(deb "$pkg")" | tar -C "$root" -x --wildcards \
			--exclude=./usr/share/doc --exclude=./usr/share/lintian --exclude=./usr/share/man "$@"
	}
	new_container
	unpack libc6
	unpack libgcc-s1
	unpack tzdata ./usr/share/zoneinfo
	unpack netbase ./etc/protocols ./etc/services ./etc/rpc ./etc/ethertypes
	unpack base-files ./etc/os-release ./usr/lib/os-release ./etc/debian_version
	# The CA bundle as update-ca-certificates writes it, from the package's certificates.
	mkdir -p "$scratch/ca" "$root/etc/ssl/certs"
	dpkg-deb -x "$(deb ca-certificates)" "$scratch/ca"
	for cert in "$scratch"/ca/usr/share/ca-certificates/mozilla/*.crt; do
		cat "$cert"
	done >"$root/etc/ssl/certs/ca-certificates.crt"
	cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
	cat >"$root/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
EOF
	printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' \
		'networks: files' 'protocols: files' 'services: files' 'ethers: files' 'rpc: files' \
		>"$root/etc/nsswitch.conf"
	install -d -m 0700 "$root/root"
	install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
	install -d -m 1777 "$root/tmp"
	for forbidden in bin/sh usr/bin/sh bin/bash usr/bin/dpkg usr/bin/apt; do
		if [[ -e $root/$forbidden || -L $root/$forbidden ]]; then
			echo "[base-images] the runtime stand-in holds /$forbidden" >&2
			exit 1
		fi
	done
	buildah config \
		--user 65532 \
		--workingdir /home/nonroot \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
		"$ctr"
	commit "$runtime_ref" "$runtime_inputs"
fi
