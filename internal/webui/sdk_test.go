package webui_test

import (
	"testing"

	"github.com/parley-mesh/parley/internal/edgetest"
)

// The SDK's tests with Node's test runner: sdk/js/test/sdk.test.js against
// a real mesh (resume across an edge restart, dedup of a retried publish,
// token refresh on reconnect, the bounded offline queue, and the API around
// them), and test/protocol.test.js against a scripted edge (duplicates at a
// seam, a stream reset, a cut-off last, close codes).
func TestSDK(t *testing.T) {
	sdkDir(t)
	edgetest.NodeBin(t)
	m := startMesh(t)
	runNodeTests(t, m, nil, "test/protocol.test.js", "test/sdk.test.js")
}
