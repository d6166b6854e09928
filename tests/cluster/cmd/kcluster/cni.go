package main

// kcluster cni-loopback: a chained CNI plugin (after `bridge`) that makes the cluster's host
// addresses the same inside every pod as on the host. The API servers and the issuers listen on
// 127.0.0.1:PORT of the host; in a pod, 127.0.0.1 is the pod's own loopback. For each of the
// configured ports this plugin adds, in the pod's network namespace only, a DNAT of
// 127.0.0.1:PORT to the node's address (where `kcluster netfwd` listens and splices to the host's
// 127.0.0.1:PORT), and the SNAT the rerouted packet needs. So an operator in a pod reaches Dex at
// the very issuer URL that is in the tokens, and a kubeconfig naming https://127.0.0.1:API_PORT
// works in a pod as on the host. Other loopback ports of the pod stay its own.
//
// Network configuration: {"type": "kcluster-loopback", "target": "10.200.0.2", "ports": [6443]}
// Only ADD does anything; the pod's namespace, and its rules with it, go away on DEL.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
)

func runCNILoopback() int {
	cmd := os.Getenv("CNI_COMMAND")
	if cmd == "VERSION" {
		fmt.Println(`{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}`)
		return 0
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return cniError("0.4.0", "reading the configuration: "+err.Error())
	}
	var conf struct {
		CNIVersion string          `json:"cniVersion"`
		Target     string          `json:"target"`
		Ports      []int           `json:"ports"`
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(raw, &conf); err != nil {
		return cniError("0.4.0", "bad configuration: "+err.Error())
	}
	switch cmd {
	case "ADD":
		if ip := net.ParseIP(conf.Target); ip == nil || ip.To4() == nil || ip.IsLoopback() {
			return cniError(conf.CNIVersion, "target must be the node's IPv4 address")
		}
		netns := os.Getenv("CNI_NETNS")
		if netns == "" {
			return cniError(conf.CNIVersion, "no CNI_NETNS")
		}
		// route_localnet lets a packet from 127.0.0.1 leave lo after the DNAT; the SNAT gives it
		// the pod's address so that the node can answer.
		script := "set -e\necho 1 >/proc/sys/net/ipv4/conf/all/route_localnet\n"
		for _, p := range conf.Ports {
			if p <= 0 || p > 65535 {
				return cniError(conf.CNIVersion, "bad port "+strconv.Itoa(p))
			}
			script += fmt.Sprintf("iptables -w -t nat -A OUTPUT -d 127.0.0.1/32 -p tcp --dport %d -j DNAT --to-destination %s:%d\n", p, conf.Target, p)
		}
		script += fmt.Sprintf("iptables -w -t nat -A POSTROUTING -s 127.0.0.0/8 -d %s/32 -j MASQUERADE\n", conf.Target)
		c := exec.Command("nsenter", "--net="+netns, "sh", "-c", script)
		if out, err := c.CombinedOutput(); err != nil {
			return cniError(conf.CNIVersion, fmt.Sprintf("rules in %s: %v: %s", netns, err, out))
		}
		if len(conf.PrevResult) == 0 {
			return cniError(conf.CNIVersion, "must be chained after a plugin that gives the pod an address")
		}
		os.Stdout.Write(conf.PrevResult)
		return 0
	case "DEL", "CHECK":
		return 0
	default:
		return cniError(conf.CNIVersion, "unknown CNI_COMMAND "+cmd)
	}
}

func cniError(version, msg string) int {
	if version == "" {
		version = "0.4.0"
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": version, "code": 999, "msg": msg})
	os.Stdout.Write(b)
	return 1
}
