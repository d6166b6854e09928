package main

// kcluster netfwd: the node's only way in and out. The node (containerd, kubelet, kube-proxy and
// every pod) lives in a network namespace of its own, whose addresses exist nowhere else; the
// control plane and the issuers listen on the host's loopback. This process runs in the host's
// namespace and splices TCP connections across the boundary, so no address of either side is
// ever routed to the other:
//
//	--into PORT   listens on 0.0.0.0:PORT inside the node's namespace (its loopback and node IP)
//	              and connects to 127.0.0.1:PORT on the host (API servers, Dex, the test issuer)
//	--out PORT    listens on 127.0.0.1:PORT on the host and connects to 127.0.0.1:PORT inside the
//	              node's namespace (the kubelet's port, for exec, attach, logs and port-forward)
//
//	kcluster netfwd --netns /run/netns/NAME --into 6443 --into 5556 ... --out 10250 [--cluster-dir DIR]

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on a thread switched into the namespace at path, then switches the thread back.
// Sockets keep the namespace they were created in, so a listener made here accepts connections
// of that namespace from any goroutine, and a dialled connection stays in it.
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the other namespace: never give it back to the runtime.
		fmt.Fprintln(os.Stderr, "netfwd: cannot switch back:", err)
		os.Exit(1)
	}
	return ferr
}

func runNetfwd(args []string) int {
	var netns string
	var into, out []int
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--netns":
			netns = args[i+1]
		case "--cluster-dir":
			// Unused: names the cluster this process belongs to (tests/cluster/lib.sh, is_ours).
		case "--into", "--out":
			p, err := strconv.Atoi(args[i+1])
			if err != nil || p <= 0 || p > 65535 {
				fmt.Fprintln(os.Stderr, "netfwd: bad port", args[i+1])
				return 2
			}
			if args[i] == "--into" {
				into = append(into, p)
			} else {
				out = append(out, p)
			}
		default:
			fmt.Fprintln(os.Stderr, "netfwd: unknown flag", args[i])
			return 2
		}
	}
	if netns == "" || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: kcluster netfwd --netns PATH [--into PORT]... [--out PORT]...")
		return 2
	}
	for _, p := range into {
		var l net.Listener
		err := inNetns(netns, func() (err error) {
			l, err = net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(p))
			return err
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "netfwd: listen in node namespace:", err)
			return 1
		}
		dst := "127.0.0.1:" + strconv.Itoa(p)
		go serveFwd(l, func() (net.Conn, error) { return net.Dial("tcp4", dst) }, "into "+dst)
	}
	for _, p := range out {
		l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			fmt.Fprintln(os.Stderr, "netfwd: listen on host:", err)
			return 1
		}
		dst := "127.0.0.1:" + strconv.Itoa(p)
		go serveFwd(l, func() (c net.Conn, err error) {
			err = inNetns(netns, func() (err error) {
				c, err = net.Dial("tcp4", dst)
				return err
			})
			return c, err
		}, "out to node "+dst)
	}
	fmt.Fprintf(os.Stderr, "netfwd ready: into node %v, out of node %v (%s)\n", into, out, netns)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	fmt.Fprintln(os.Stderr, "netfwd: stopping on", s)
	return 0
}

func serveFwd(l net.Listener, dial func() (net.Conn, error), what string) {
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netfwd: accept", what+":", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			u, err := dial()
			if err != nil {
				fmt.Fprintln(os.Stderr, "netfwd:", what+":", err)
				return
			}
			defer u.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				// Half-close: the other direction may still be sending (HTTP/1 upgrades do).
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}
			go pipe(u, c)
			go pipe(c, u)
			wg.Wait()
		}()
	}
}
