# ---- local test cluster (tests/cluster; see README, "Local cluster") --------------------------------
# etcd + kube-apiserver + kube-controller-manager (k8s v1.37.2) + Dex (main, short) + OpenLDAP,
# all on 127.0.0.1. CLUSTER_DIR=... selects another, independent cluster (default target/cluster).
# `make node-up` (or `make cluster-up NODE=1`) adds the node: kube-scheduler, containerd, kubelet
# and kube-proxy in a network namespace of their own, for tests that run pods.
CLUSTER_DIR ?= target/cluster
export CLUSTER_DIR
CLUSTER_COMPONENTS := etcd ldap dex dex-short test-issuer apiserver apiserver-authn controller-manager \
	scheduler netfwd containerd kubelet kube-proxy

.PHONY: cluster-up cluster-down cluster-status node-up
cluster-up:
	bash scripts/install-deps.sh
	NODE=$(NODE) bash tests/cluster/up.sh

node-up:
	NODE=1 bash scripts/install-deps.sh
	NODE=1 bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

cluster-status:
	bash tests/cluster/ctl status

# The operator and its API server proxy installed on the node as README "Deployment" says: the
# image of `make image` imported into the node's containerd, config/default and config/proxy
# with an overlay of the image, issuer, CA, server and the proxy's address and certificate
# ($(CLUSTER_DIR)/deploy), applied; waits for both rollouts.
.PHONY: deploy
deploy: node-up
	bash scripts/deploy.sh

# tests/differential.rs (the operator's verdict on tokens against kube-apiserver's) against another
# Kubernetes release than the harness's, e.g. the oldest supported minor:
#   make differential KUBERNETES_VERSION=1.35.4
# in a cluster of its own (CLUSTER_DIR target/cluster-<version>), built from that release's Go
# modules (tests/cluster/up.sh, build_kubernetes) and taken down afterwards, also on failure.
.PHONY: differential
differential: CLUSTER_DIR = target/cluster-$(KUBERNETES_VERSION)
differential:
	$(if $(KUBERNETES_VERSION),,$(error set KUBERNETES_VERSION, e.g. make differential KUBERNETES_VERSION=1.35.4))
	bash scripts/install-deps.sh
	KUBERNETES_VERSION=$(KUBERNETES_VERSION) bash tests/cluster/up.sh
	KUBERNETES_VERSION=$(KUBERNETES_VERSION) cargo test --test differential; \
		status=$$?; bash tests/cluster/down.sh; exit $$status

# make cluster-stop-apiserver / cluster-start-dex / cluster-restart-apiserver ...
CLUSTER_CTL_TARGETS := $(foreach a,stop start restart,$(addprefix cluster-$(a)-,$(CLUSTER_COMPONENTS)))
.PHONY: $(CLUSTER_CTL_TARGETS)
$(filter cluster-stop-%,$(CLUSTER_CTL_TARGETS)): cluster-stop-%:
	bash tests/cluster/ctl stop $*
$(filter cluster-start-%,$(CLUSTER_CTL_TARGETS)): cluster-start-%:
	bash tests/cluster/ctl start $*
$(filter cluster-restart-%,$(CLUSTER_CTL_TARGETS)): cluster-restart-%:
	bash tests/cluster/ctl restart $*
# ---- end of local test cluster ----------------------------------------------------------------

# ---- the image (see README, "Deployment") ------------------------------------------------------
# The Dockerfile built with buildah against local stand-ins for its base images, pulling nothing:
# image kubeconfig-operator:dev in buildah's storage and target/image/kubeconfig-operator.tar (a
# docker archive, for `ctr images import`). `make test-image` runs it and checks it.
.PHONY: image test-image
image:
	bash scripts/install-deps.sh
	bash scripts/image.sh

test-image:
	bash scripts/test-image.sh
# ---- end of the image ---------------------------------------------------------------------------

.PHONY: run test fuzz
# The main job: local cluster and Dex (started or reused), CRD/policy/RBAC, a sample request for
# alice, and the operator in the foreground on $(LISTEN).
LISTEN ?= 127.0.0.1:8000
export LISTEN
run:
	bash scripts/run-local.sh

# Every test: unit and integration tests against the local cluster, then each fuzz target for
# FUZZ_SECONDS (scripts/test.sh builds all three parts side by side). The cluster is torn down
# even when tests fail.
FUZZ_SECONDS ?= 60
test:
	bash scripts/test.sh $(FUZZ_SECONDS)

fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)
