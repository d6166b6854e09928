package main

// kcluster oci-archive: writes a one-layer OCI image archive, FROM scratch, that
// `ctr -n k8s.io images import` loads. No registry is reachable here, so the node's pause image
// and the tests' tool image are made this way from static binaries built by up.sh.
//
//	kcluster oci-archive --name kcluster.local/pause:1 --out FILE --entrypoint /pause \
//	    [--user 65532] --file /pause=PATH [--file /x=PATH]... [--dir /tmp]...

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"strings"
	"time"
)

type blob struct {
	mediaType string
	data      []byte
}

func (b blob) digest() string {
	s := sha256.Sum256(b.data)
	return "sha256:" + hex.EncodeToString(s[:])
}

func (b blob) desc() map[string]any {
	return map[string]any{"mediaType": b.mediaType, "digest": b.digest(), "size": len(b.data)}
}

func runOCIArchive(args []string) int {
	var name, out, entry, user string
	var files [][2]string
	var dirs []string
	for i := 0; i+1 < len(args); i += 2 {
		v := args[i+1]
		switch args[i] {
		case "--name":
			name = v
		case "--out":
			out = v
		case "--entrypoint":
			entry = v
		case "--user":
			user = v
		case "--file":
			dst, src, ok := strings.Cut(v, "=")
			if !ok || !path.IsAbs(dst) {
				fmt.Fprintln(os.Stderr, "oci-archive: --file /IN/IMAGE=HOSTPATH")
				return 2
			}
			files = append(files, [2]string{dst, src})
		case "--dir":
			dirs = append(dirs, v)
		default:
			fmt.Fprintln(os.Stderr, "oci-archive: unknown flag", args[i])
			return 2
		}
	}
	if name == "" || out == "" || entry == "" || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: kcluster oci-archive --name REF --out FILE --entrypoint PATH --file /DST=SRC... [--dir /D]... [--user UID]")
		return 2
	}
	if err := writeOCIArchive(name, out, entry, user, files, dirs); err != nil {
		fmt.Fprintln(os.Stderr, "oci-archive:", err)
		return 1
	}
	return 0
}

func writeOCIArchive(name, out, entry, user string, files [][2]string, dirs []string) error {
	epoch := time.Unix(0, 0).UTC()
	// The layer: the files (mode 0755, root-owned) and the directories (1777, like /tmp).
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o1777, ModTime: epoch}); err != nil {
			return err
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f[1])
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f[0], "/"), Mode: 0o755, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	diffID := sha256.Sum256(layerTar.Bytes())
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(layerTar.Bytes())
	zw.Close()
	layer := blob{"application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes()}

	cfg := map[string]any{"Entrypoint": []string{entry}, "Env": []string{"PATH=/"}}
	if user != "" {
		cfg["User"] = user
	}
	configJSON, _ := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	config := blob{"application/vnd.oci.image.config.v1+json", configJSON}
	manifestJSON, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config.desc(),
		"layers":        []any{layer.desc()},
	})
	manifest := blob{"application/vnd.oci.image.manifest.v1+json", manifestJSON}
	md := manifest.desc()
	tag := name[strings.LastIndex(name, ":")+1:]
	md["annotations"] = map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
	md["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
	indexJSON, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})

	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	put := func(n string, data []byte) error {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := aw.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	for _, b := range []blob{layer, config, manifest} {
		if err := put("blobs/sha256/"+strings.TrimPrefix(b.digest(), "sha256:"), b.data); err != nil {
			return err
		}
	}
	if err := put("index.json", indexJSON); err != nil {
		return err
	}
	if err := aw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}
