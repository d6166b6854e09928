// kcluster runs the pieces of the local test cluster, one component per process:
//
//	kcluster etcd --data-dir DIR --client-port N --peer-port N
//	kcluster apiserver [kube-apiserver flags...]
//	kcluster controller-manager [kube-controller-manager flags...]
//	kcluster scheduler [kube-scheduler flags...]
//	kcluster kubelet [kubelet flags...]
//	kcluster proxy [kube-proxy flags...]
//	kcluster netfwd --netns PATH [--into PORT]... [--out PORT]...   (netfwd.go)
//	kcluster oci-archive --name REF --out FILE ...                  (ociimage.go)
//	kcluster-loopback                    (argv[0]) the node's chained CNI plugin (cni.go)
//	kcluster freeports N                 prints N free TCP ports on 127.0.0.1
//	kcluster certs DIR                   writes CA, serving certs, admin client cert, SA key
//	kcluster bcrypt                      reads a password on stdin, prints its bcrypt hash
//	kcluster testissuer-keys DIR         writes the test issuer's signing keys once (testissuer.go)
//	kcluster testissuer --dir DIR --port N --cert FILE --key FILE
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/crypto/bcrypt"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kcluster etcd|apiserver|controller-manager|scheduler|kubelet|proxy|netfwd|oci-archive|freeports|certs|bcrypt|testissuer-keys|testissuer ...")
	os.Exit(2)
}

func main() {
	if filepath.Base(os.Args[0]) == "kcluster-loopback" {
		os.Exit(runCNILoopback())
	}
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "etcd":
		os.Exit(runEtcd(args))
	case "apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "controller-manager":
		cmd := kcm.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "netfwd":
		os.Exit(runNetfwd(args))
	case "oci-archive":
		os.Exit(runOCIArchive(args))
	case "freeports":
		n := 1
		if len(args) > 0 {
			n, _ = strconv.Atoi(args[0])
		}
		os.Exit(freePorts(n))
	case "certs":
		if len(args) != 1 {
			usage()
		}
		if err := writeCerts(args[0]); err != nil {
			fmt.Fprintln(os.Stderr, "certs:", err)
			os.Exit(1)
		}
	case "bcrypt":
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			fmt.Fprintln(os.Stderr, "bcrypt: no password on stdin")
			os.Exit(1)
		}
		h, err := bcrypt.GenerateFromPassword([]byte(strings.TrimRight(line, "\r\n")), 10)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bcrypt:", err)
			os.Exit(1)
		}
		fmt.Println(string(h))
	case "testissuer-keys":
		if len(args) != 1 {
			usage()
		}
		if err := writeTestIssuerKeys(args[0]); err != nil {
			fmt.Fprintln(os.Stderr, "testissuer-keys:", err)
			os.Exit(1)
		}
	case "testissuer":
		os.Exit(runTestIssuer(args))
	default:
		usage()
	}
}

// freePorts binds N listeners at once (so the ports are distinct), prints their ports, then closes them.
func freePorts(n int) int {
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "freeports:", err)
			return 1
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return 0
}

func runEtcd(args []string) int {
	dataDir, clientPort, peerPort := "", "", ""
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--data-dir":
			dataDir = args[i+1]
		case "--client-port":
			clientPort = args[i+1]
		case "--peer-port":
			peerPort = args[i+1]
		default:
			fmt.Fprintln(os.Stderr, "etcd: unknown flag", args[i])
			return 2
		}
	}
	if dataDir == "" || clientPort == "" || peerPort == "" {
		fmt.Fprintln(os.Stderr, "etcd: need --data-dir, --client-port, --peer-port")
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Name = "kcluster"
	cfg.Dir = dataDir
	cfg.LogLevel = "warn"
	cu, _ := url.Parse("http://127.0.0.1:" + clientPort)
	pu, _ := url.Parse("http://127.0.0.1:" + peerPort)
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	// etcd's suggested ceiling: the issuance benchmark's 100,000 requests, each with two
	// Secrets, several revisions apiece between compactions, outgrow the 2 GiB default.
	cfg.QuotaBackendBytes = 8 << 30
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd ready on", cu.String())
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	case s := <-sig:
		fmt.Fprintln(os.Stderr, "etcd: stopping on", s)
		return 0
	}
}
