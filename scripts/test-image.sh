#!/usr/bin/env bash
# Tests the image `make image` built (IMAGE, default kubeconfig-operator:dev): its configuration,
# its contents, and the binary run by runc as a kubelet would run it: the image's entrypoint, user,
# environment and working directory, a read-only root file system, no capabilities, no network.
# Also the docker archive a node imports. Run as root, after `make image`.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-kubeconfig-operator:dev}
archive=target/image/kubeconfig-operator.tar
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)

failures=0
fail() {
	echo "[test-image] FAIL: $*" >&2
	failures=$((failures + 1))
}
pass() { echo "[test-image] ok: $*" >&2; }
# expect WHAT ACTUAL EXPECTED
expect() {
	if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/test-image.XXXXXX")
ctr=
cleanup() {
	runc delete --force "$id" >/dev/null 2>&1 || true
	if [[ -n $ctr ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
	rm -rf "$work"
}
id=kubeconfig-operator-image-test-$$
trap cleanup EXIT

# ---- the image's configuration ------------------------------------------------------------------
inspect=$(buildah inspect --type image "$image")
config=$(jq '.OCIv1.config' <<<"$inspect")
expect "user" "$(jq -r '.User' <<<"$config")" "65532:65532"
expect "entrypoint" "$(jq -c '.Entrypoint' <<<"$config")" '["/usr/local/bin/kubeconfig-operator"]'
expect "default arguments" "$(jq -c '.Cmd' <<<"$config")" '["run"]'
expect "exposed ports" "$(jq -c '.ExposedPorts | keys' <<<"$config")" '["8000/tcp"]'

# ---- its contents -------------------------------------------------------------------------------
ctr=$(buildah from --pull=never "$image")
rootfs=$(buildah mount "$ctr")
for path in /bin/sh /usr/bin/sh /bin/bash /bin/busybox /usr/bin/dpkg /usr/bin/apt-get; do
	if [[ -e $rootfs$path || -L $rootfs$path ]]; then fail "$path is in the image"; else pass "no $path"; fi
done
if [[ -x $rootfs/usr/local/bin/kubeconfig-operator ]]; then pass "the binary"; else fail "no /usr/local/bin/kubeconfig-operator"; fi
if [[ -s $rootfs/etc/ssl/certs/ca-certificates.crt ]]; then pass "CA bundle"; else fail "no CA bundle"; fi
expect "user 65532 in /etc/passwd" "$(awk -F: '$3 == 65532 {print $1}' "$rootfs/etc/passwd")" "nonroot"

# ---- the binary, run by runc --------------------------------------------------------------------
# run NAME ARGS...: the container with the image's entrypoint and ARGS (none: the image's default
# arguments); sets $status, $stdout and $stderr.
mkdir "$work/bundle"
(cd "$work/bundle" && runc spec)
run() {
	local name=$1
	shift
	local args
	if (($#)); then args=$(printf '%s\n' "$@" | jq -cR . | jq -cs .); else args=$(jq -c '.Cmd // []' <<<"$config"); fi
	jq --arg root "$rootfs" --argjson args "$args" --argjson image "$config" '
		.root = {path: $root, readonly: true}
		| .process.terminal = false
		| .process.args = ($image.Entrypoint + $args)
		| .process.env = ($image.Env // [])
		| .process.cwd = ($image.WorkingDir // "/" | if . == "" then "/" else . end)
		| .process.user = ($image.User | split(":") | {uid: (.[0] | tonumber), gid: (.[1] // .[0] | tonumber)})
		| .process.capabilities = {bounding: [], effective: [], permitted: [], inheritable: [], ambient: []}
		| .process.noNewPrivileges = true
		| .hostname = "image-test"' \
		"$work/bundle/config.json" >"$work/config.json"
	mv "$work/config.json" "$work/bundle/config.json"
	status=0
	runc run --bundle "$work/bundle" "$id" >"$work/stdout" 2>"$work/stderr" </dev/null || status=$?
	stdout=$(cat "$work/stdout")
	stderr=$(cat "$work/stderr")
	echo "[test-image] $name: exit $status" >&2
}

run "version" version
expect "version: exit code" "$status" 0
expect "version: output" "$stdout" "kubeconfig-operator $version"

# README, "Configuration": a bad value stops start-up with exit code 2 and one line naming the
# field. With no arguments the container runs the image's default, `run`, with no configuration.
run "default arguments, no configuration"
expect "run without configuration: exit code" "$status" 2
expect "run without configuration: message" "$stderr" "invalid configuration: server: is required"

run "run with an http issuer" run --server https://kubernetes.default.svc \
	--oidc-issuer-url http://dex.example --oidc-client-id kubernetes
expect "run with an http issuer: exit code" "$status" 2
expect "run with an http issuer: lines" "$(wc -l <"$work/stderr")" 1
if [[ $stderr == "invalid configuration: oidc.issuerUrl: "*"must use https"* ]]; then
	pass "run with an http issuer: message"
else
	fail "run with an http issuer: message: $stderr"
fi

# ---- the archive a node imports -----------------------------------------------------------------
if [[ -s $archive ]]; then
	manifest=$(tar -xOf "$archive" manifest.json)
	# The name a node's runtime gives the image on import, as Kubernetes names it in a pod spec.
	full=$image
	[[ $full == */* ]] || full=docker.io/library/$full
	expect "archive: tagged $full" "$(jq --arg name "$full" '.[0].RepoTags | index($name) != null' <<<"$manifest")" true
	archive_config=$(tar -xOf "$archive" "$(jq -r '.[0].Config' <<<"$manifest")")
	expect "archive: user" "$(jq -r '.config.User' <<<"$archive_config")" "65532:65532"
	# The same layers: the archive is this image, not an older build.
	expect "archive: layers" "$(jq -c '.rootfs.diff_ids' <<<"$archive_config")" \
		"$(jq -c '.OCIv1.rootfs.diff_ids' <<<"$inspect")"
else
	fail "no archive at $archive"
fi

if ((failures)); then
	echo "[test-image] $failures check(s) failed" >&2
	exit 1
fi
echo "[test-image] all checks passed" >&2
