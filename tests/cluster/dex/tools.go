//go:build tools

// Package tools pins the upstream Dex module; build it with
//   go build -o BIN github.com/dexidp/dex/cmd/dex
package tools

import _ "github.com/dexidp/dex/cmd/dex"
