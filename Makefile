# ---- local test cluster (tests/cluster; see NOTES-cluster.md) --------------------------------
# etcd + kube-apiserver + kube-controller-manager (k8s v1.33.13) + Dex (main, short) + OpenLDAP,
# all on 127.0.0.1. CLUSTER_DIR=... selects another, independent cluster (default target/cluster).
CLUSTER_DIR ?= target/cluster
export CLUSTER_DIR
CLUSTER_COMPONENTS := etcd ldap dex dex-short apiserver controller-manager

.PHONY: cluster-up cluster-down cluster-status
cluster-up:
	bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

cluster-status:
	bash tests/cluster/ctl status

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

.PHONY: test
# Brings the cluster up, runs every Rust test, and tears the cluster down even when tests fail.
test:
	$(MAKE) cluster-up
	rc=0; cargo test --all-targets || rc=$$?; $(MAKE) cluster-down; exit $$rc
