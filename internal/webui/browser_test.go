package webui_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/parley-mesh/parley/internal/edgetest"
)

// The chat page in a real headless Chromium (sdk/js/test/browser.test.js,
// driven by puppeteer-core): two pages in one room see each other's
// messages and presence, and both resume without a lost or repeated
// message when the edge serving them restarts, and scroll back through
// history; on an edge that takes only JWTs the page asks for a token and
// works with it. The screenshots are kept in a temporary directory named in
// the log.
func TestChatPageInChromium(t *testing.T) {
	sdkDir(t)
	edgetest.NodeBin(t)
	chromium := os.Getenv("PARLEY_CHROMIUM")
	if chromium == "" {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if p, err := exec.LookPath(name); err == nil {
				chromium = p
				break
			}
		}
	}
	if chromium == "" {
		edgetest.Need(t, "Chromium", "apt-get install chromium (.ci/run does), or set PARLEY_CHROMIUM to a Chrome binary")
	}
	shots, err := os.MkdirTemp("", "parley-chat-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	m := startMesh(t)
	runNodeTests(t, m, []string{"PARLEY_CHROMIUM=" + chromium, "PARLEY_SCREENSHOT_DIR=" + shots}, "test/browser.test.js")
	t.Logf("screenshots of the chat page: %s", shots)
}
