#!/usr/bin/env bash
# Installs the system packages the local cluster and the browser test need when they are missing
# (Debian), so that `make run` and `make test` work on a fresh machine. Go, kubectl and cargo must
# already be there.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin:$HOME/.cargo/bin"
need=()
command -v curl >/dev/null || need+=(curl)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc libc6-dev)   # Dex links SQLite through cgo
command -v flock >/dev/null && command -v setsid >/dev/null || need+=(util-linux)
[[ -x /usr/sbin/slapd && -x /usr/sbin/slappasswd ]] || need+=(slapd) # Dex's user directory
# The kubeconfig page's browser test (tests/console.rs): headless Chromium and its driver.
[[ -x /usr/bin/chromium ]] || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The local cluster's node (NODE=1: make node-up, make deploy, make test).
if [[ "${NODE:-}" == 1 ]]; then
	[[ -x /usr/bin/containerd ]] || need+=(containerd)
	[[ -x /usr/sbin/runc ]] || need+=(runc)
	[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
	command -v iptables >/dev/null || need+=(iptables)
	command -v ip >/dev/null || need+=(iproute2)
fi
# The benchmarks (BENCH=1: bench/http.sh, bench/profile.sh): wrk for load, perf for profiles.
if [[ "${BENCH:-}" == 1 ]]; then
	command -v wrk >/dev/null || need+=(wrk)
	command -v perf >/dev/null || need+=(linux-perf)
fi
# The image (make image, scripts/test-image.sh): buildah runs RUN steps with runc (crun refuses
# this machine's hybrid cgroups), mmdebstrap makes the base images' stand-ins, jq reads configs.
command -v buildah >/dev/null || need+=(buildah)
command -v runc >/dev/null || need+=(runc)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
	echo "[deps] apt-get install ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	sudo_cmd=()
	[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
	"${sudo_cmd[@]}" apt-get update -qq
	"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
for tool in go kubectl cargo; do
	command -v "$tool" >/dev/null || { echo "[deps] $tool is not installed on this machine" >&2; exit 1; }
done
