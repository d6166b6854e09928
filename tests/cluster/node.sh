# shellcheck shell=bash
# The local cluster's node (NODE=1 up.sh, `make node-up`): kube-scheduler, containerd with runc and
# the CNI bridge plugin, the kubelet and kube-proxy. Sourced by lib.sh, not executed.
#
# Network: the node lives in a network namespace of its own ($NODE_NETNS), created here. Its
# address ($NODE_IP, on its loopback), the pods' bridge and range ($POD_CIDR) and the Service
# range's rules exist only inside that namespace; nothing is routed out of it. The control plane
# stays on the host's 127.0.0.1. `kcluster netfwd` (the only bridge between the two) listens in
# the node's namespace on the ports of the API servers, Dex and the test issuer and splices them
# to the host's 127.0.0.1, and on the host's 127.0.0.1:$KUBELET_PORT for the kubelet. The chained
# CNI plugin kcluster-loopback makes 127.0.0.1:<those ports> inside every pod lead to the node's
# address, so URLs of the host (issuer, API server) are the same in pods.

NODE_NAME=127.0.0.1 # kcluster certs issues system:node:127.0.0.1; see certs.go
NODE_IP=10.200.0.2
POD_CIDR=10.244.0.0/24
NODE_DIR="$CLUSTER_DIR/node"
# One namespace and cgroup per cluster directory, so that two clusters' nodes never meet.
NODE_ID="kc-$(printf '%s' "$CLUSTER_DIR" | sha1sum | cut -c1-10)"
NODE_NETNS="/run/netns/$NODE_ID"
CONTAINERD_SOCK="$NODE_DIR/containerd.sock"
PAUSE_IMAGE=kcluster.local/pause:1
TOOLS_IMAGE=kcluster.local/tools:1
# Start order (after COMPONENTS); stop order is the reverse.
NODE_COMPONENTS=(scheduler netfwd containerd kubelet kube-proxy)
# The sysctls the kubelet sets on start (container_manager_linux.go, setupKernelTunables); they
# are not namespaced, so the first node to start records them (machine-wide, in
# $NODE_SYSCTLS_SAVED) and the last one to stop puts them back.
NODE_SYSCTLS_SAVED=/run/kcluster/sysctls.saved
NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

# The namespaces of other clusters' nodes on this machine.
other_nodes() { find /run/netns -maxdepth 1 -name 'kc-*' ! -name "$NODE_ID" 2>/dev/null; }
in_node() { nsenter --net="$NODE_NETNS" "$@"; }
node_ctr() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# The ports pods and the kubelet reach on the host through netfwd (all on the host's 127.0.0.1).
node_into_ports() { echo "$API_PORT $API_AUTHN_PORT $DEX_PORT $DEX_SHORT_PORT $TEST_ISSUER_PORT"; }

node_cmd() {
	local a p
	case "$1" in
	scheduler)
		CMD=("$KUBE_BIN/kcluster" scheduler
			--kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig"
			--authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig"
			--authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig"
			--bind-address=127.0.0.1 --secure-port="$SCHED_PORT"
			--leader-elect=false --profiling=false --v=1)
		;;
	netfwd)
		a=()
		for p in $(node_into_ports); do a+=(--into "$p"); done
		# --cluster-dir: is_ours looks for the cluster's directory among the arguments.
		CMD=("$CLUSTER_BIN/kcluster" netfwd --netns "$NODE_NETNS" "${a[@]}" --out "$KUBELET_PORT" --cluster-dir "$CLUSTER_DIR/")
		;;
	containerd)
		CMD=(nsenter --net="$NODE_NETNS" /usr/bin/containerd --config "$NODE_DIR/containerd.toml")
		;;
	kubelet)
		CMD=(nsenter --net="$NODE_NETNS" "$KUBE_BIN/kcluster" kubelet
			--config="$NODE_DIR/kubelet.yaml"
			--kubeconfig="$CLUSTER_DIR/node.kubeconfig"
			--hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
			--root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet/pki"
			--v=1)
		;;
	kube-proxy)
		# --v=3: each sync and the endpoints it programmed, for tests/deploy.rs's message when a
		# download through a Service fails (--v=1 logs neither).
		CMD=(nsenter --net="$NODE_NETNS" "$KUBE_BIN/kcluster" proxy --config="$NODE_DIR/kube-proxy.yaml" --v=3)
		;;
	*) return 1 ;;
	esac
}

node_is_ready() {
	case "$1" in
	scheduler) [[ "$(curl -s -m 3 -k "https://127.0.0.1:$SCHED_PORT/healthz" 2>/dev/null)" == ok ]] ;;
	netfwd) (exec 3<>"/dev/tcp/127.0.0.1/$KUBELET_PORT") 2>/dev/null ;;
	containerd) node_ctr version >/dev/null 2>&1 ;;
	kubelet) [[ "$(in_node curl -s -m 3 http://127.0.0.1:10248/healthz 2>/dev/null)" == ok ]] ;;
	kube-proxy) [[ "$(in_node curl -s -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/healthz 2>/dev/null)" == 200 ]] ;;
	*) return 1 ;;
	esac
}

# node_setup: everything the node's processes need before they start (idempotent).
node_setup() {
	local tool h cg f
	for tool in /usr/bin/containerd /usr/sbin/runc ctr nsenter ip iptables /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
		command -v "$tool" >/dev/null || die "missing $tool (scripts/install-deps.sh installs containerd runc containernetworking-plugins iptables)"
	done
	mkdir -p "$NODE_DIR/cni/bin" "$NODE_DIR/cni/net.d" "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs"

	# The namespace: loopback up, the node's address on it, forwarding for the pods' bridge.
	[[ -e "$NODE_NETNS" ]] || ip netns add "$NODE_ID"
	in_node ip link set lo up
	in_node ip addr replace "$NODE_IP/32" dev lo
	in_node sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
	# Pod to Service to a pod on the same bridge: the bridge's frames must meet kube-proxy's rules.
	in_node sh -c 'f=/proc/sys/net/bridge/bridge-nf-call-iptables; [ ! -e $f ] || echo 1 >$f'

	# The kubelet's cgroup root, one per cluster, in every cgroup v1 hierarchy (and v2 if unified).
	for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
		[[ -e "$h/cgroup.procs" && "$h" != */unified/ ]] || continue
		cg="$h$NODE_ID"
		mkdir -p "$cg"
		if [[ -e "$h/cpuset.cpus" && -z "$(cat "$cg/cpuset.cpus")" ]]; then
			cat "$h/cpuset.cpus" >"$cg/cpuset.cpus"
			cat "$h/cpuset.mems" >"$cg/cpuset.mems"
		fi
	done

	if [[ ! -f "$NODE_SYSCTLS_SAVED" && -z "$(other_nodes)" ]]; then
		mkdir -p "${NODE_SYSCTLS_SAVED%/*}"
		for f in "${NODE_SYSCTLS[@]}"; do echo "$f=$(cat "/proc/sys/$f")"; done >"$NODE_SYSCTLS_SAVED"
	fi

	# CNI: Debian's plugins, and kcluster itself as kcluster-loopback.
	for f in /usr/lib/cni/*; do ln -sfn "$f" "$NODE_DIR/cni/bin/"; done
	ln -sfn "$CLUSTER_BIN/kcluster" "$NODE_DIR/cni/bin/kcluster-loopback"
	local ports
	ports="$(node_into_ports | tr ' ' ',')"
	cat >"$NODE_DIR/cni/net.d/10-kcluster.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kcluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "kcbr0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni/ipam"
      }
    },
    {"type": "kcluster-loopback", "target": "$NODE_IP", "ports": [$ports]}
  ]
}
EOF

	cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built by up.sh from tests/cluster/cmd/pause and imported: nothing is ever pulled.
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The sandbox's processes run with a raised oom_score_adj that they may not lower; runc would
  # fail to set the pause container's -998 ("failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "$NODE_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$NODE_DIR/cni/bin"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF

	cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_ID
# This machine has cgroup v1 (hybrid); 1.35+ refuse it unless told.
failCgroupV1: false
failSwapOn: false
podCIDR: $POD_CIDR
podLogsDir: $NODE_DIR/pod-logs
# Pods get no resolver: the cluster has no DNS, and nothing in a pod may leave the node.
resolvConf: ""
clusterDomain: cluster.local
hairpinMode: hairpin-veth
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
EOF

	cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig
hostnameOverride: "$NODE_NAME"
mode: iptables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0: leave the kernel's conntrack settings as they are (some are not per namespace).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# node_images: the pause and tool images into the node's containerd (after containerd is ready).
node_images() {
	local img archive
	for img in pause tools; do
		archive="$CLUSTER_BIN/images/$img.tar"
		[[ -f "$archive" ]] || die "no $archive (up.sh builds it with NODE=1)"
		if [[ "$archive" -nt "$NODE_DIR/$img.imported" ]]; then
			node_ctr images import --no-unpack=false "$archive" >>"$LOGS/containerd.log" 2>&1 ||
				die "ctr images import $archive failed (see $LOGS/containerd.log)"
			touch "$NODE_DIR/$img.imported"
			log "imported $archive"
		fi
	done
}

# node_service_endpoints: the `kubernetes` Service's endpoints (the API servers run with
# --endpoint-reconciler-type=none): the node's address, where netfwd forwards to the API server.
node_service_endpoints() {
	kubectl --kubeconfig "$CLUSTER_DIR/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-kcluster
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: kcluster
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
    conditions: {ready: true}
ports:
  - name: https
    protocol: TCP
    port: $API_PORT
EOF
}

# node_wait_ready TIMEOUT: the Node object reports Ready (CNI configured, runtime up).
node_wait_ready() {
	local timeout="${1:-120}" start=$SECONDS
	until [[ "$(kubectl --kubeconfig "$CLUSTER_DIR/admin.kubeconfig" get node "$NODE_NAME" \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; do
		if ((SECONDS - start > timeout)); then
			tail -n 30 "$LOGS/kubelet.log" >&2 || true
			die "node $NODE_NAME not Ready after ${timeout}s"
		fi
		sleep 0.5
	done
	log "node $NODE_NAME Ready"
}

# node_kill_pods: every pod's containers, before containerd stops (the kubelet is stopped first,
# so nothing restarts them). A pod's processes would otherwise outlive the cluster.
node_kill_pods() {
	local t pid n inodes=" "
	node_is_ready containerd || return 0
	# The pods' network namespaces (containerd's /run/netns/cni-*), found by the inode of each
	# task's: the kubelet is gone, so nobody else tears them down.
	while read -r t pid _; do
		[[ "$pid" =~ ^[0-9]+$ ]] || continue
		inodes+="$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null) "
	done < <(node_ctr tasks ls 2>/dev/null)
	for t in $(node_ctr tasks ls -q 2>/dev/null); do
		node_ctr tasks kill --signal SIGKILL "$t" >/dev/null 2>&1 || true
	done
	for n in /run/netns/cni-*; do
		[[ -e "$n" && "$inodes" == *" $(stat -L -c %i "$n" 2>/dev/null) "* ]] || continue
		ip netns del "${n##*/}" 2>/dev/null || true
	done
	sleep 0.5
	for t in $(node_ctr tasks ls -q 2>/dev/null); do
		node_ctr tasks delete --force "$t" >/dev/null 2>&1 || true
	done
	for t in $(node_ctr containers ls -q 2>/dev/null); do
		node_ctr containers delete "$t" >/dev/null 2>&1 || true
	done
}

# node_teardown: after every node process stopped: mounts, the namespace, cgroups, sysctls.
node_teardown() {
	local m h cg line
	# Mounts below the node's directory (overlay root file systems, tmpfs volumes, shm), deepest
	# first. Also netns bind mounts of pods that containerd kept there.
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$NODE_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	if [[ -e "$NODE_NETNS" ]]; then
		ip netns del "$NODE_ID" 2>/dev/null || true
		log "removed network namespace $NODE_ID"
	fi
	for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
		cg="$h$NODE_ID"
		[[ -d "$cg" ]] || continue
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	# The last node on this machine puts the sysctls back.
	if [[ -f "$NODE_SYSCTLS_SAVED" && -z "$(other_nodes)" ]]; then
		while IFS= read -r line; do
			[[ "$line" == */*=* ]] || continue
			echo "${line#*=}" >"/proc/sys/${line%%=*}" 2>/dev/null || true
		done <"$NODE_SYSCTLS_SAVED"
		rm -f "$NODE_SYSCTLS_SAVED"
		log "restored the sysctls the kubelet set"
	fi
}
