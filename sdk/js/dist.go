// Package sdkjs holds the committed build of the TypeScript SDK
// (@parley-mesh/client, sources in src/) so that Go binaries can serve it:
// the edge's chat page (internal/webui) loads it as ES modules. The build
// is committed, not made by the Go build, so `go run ./cmd/edge` serves it
// on a fresh clone without Node; internal/webui's TestBundleUpToDate fails
// when it no longer matches the sources.
package sdkjs

import "embed"

// Regenerate after changing src/ (needs `npm ci` here once; TypeScript is
// pinned in package-lock.json).
//go:generate npm run --silent build

// Dist is the compiled ES modules, dist/*.js (the .d.ts beside them are
// for npm and TypeScript users, not served).
//
//go:embed dist/*.js
var Dist embed.FS
