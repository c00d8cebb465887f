package webui_test

import (
	"bytes"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/webui"
	sdkjs "github.com/parley-mesh/parley/sdk/js"
)

func get(t *testing.T, h http.Handler, path string, header http.Header) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

// The page, its script, the SDK's modules and the config are served with
// the right types and headers; anything else is 404; a revalidation with
// the ETag costs a 304.
func TestHandlerServesThePage(t *testing.T) {
	h, err := webui.Handler(webui.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/":              "text/html",
		"/index.html":    "text/html",
		"/app.js":        "text/javascript",
		"/style.css":     "text/css",
		"/sdk/index.js":  "text/javascript",
		"/sdk/client.js": "text/javascript",
		"/config.json":   "application/json",
	} {
		res := get(t, h, path, nil)
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), want) || len(body) == 0 {
			t.Errorf("GET %s: %d %q, %d bytes; want 200 %s", path, res.StatusCode, res.Header.Get("Content-Type"), len(body), want)
		}
		for _, hdr := range []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "ETag"} {
			if res.Header.Get(hdr) == "" {
				t.Errorf("GET %s: no %s header", path, hdr)
			}
		}
		if path == "/config.json" && strings.TrimSpace(string(body)) != `{"insecure":true}` {
			t.Errorf("config.json: %s", body)
		}
		again := get(t, h, path, http.Header{"If-None-Match": {res.Header.Get("ETag")}})
		if again.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag: %d, want 304", path, again.StatusCode)
		}
	}
	for _, path := range []string{"/nope", "/sdk/index.d.ts", "/static/app.js", "/../webui.go"} {
		if res := get(t, h, path, nil); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, res.StatusCode)
		}
	}
	secure, err := webui.Handler(webui.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(get(t, secure, "/config.json", nil).Body)
	if strings.TrimSpace(string(body)) != `{"insecure":false}` {
		t.Errorf("config.json of a secure edge: %s", body)
	}
}

// The committed SDK build (sdk/js/dist, what the edge serves and npm users
// import) is what the TypeScript sources compile to with the pinned
// compiler: a change to src/ without `go generate ./sdk/js` fails here.
func TestBundleUpToDate(t *testing.T) {
	dir := sdkDir(t)
	edgetest.NodeBin(t)
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), filepath.Join(dir, "node_modules", ".bin", "tsc"), "-p", "tsconfig.json", "--outDir", out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, b)
	}
	fresh, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range fresh {
		seen[f.Name()] = true
		want, err := os.ReadFile(filepath.Join(out, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "dist", f.Name()))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("sdk/js/dist/%s is not the build of sdk/js/src (%v): run go generate ./sdk/js and commit dist/", f.Name(), err)
		}
	}
	committed, err := os.ReadDir(filepath.Join(dir, "dist"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range committed {
		if !seen[f.Name()] {
			t.Errorf("sdk/js/dist/%s is built from no source any more: remove it", f.Name())
		}
	}
	// And the embedded copy is the committed one (go:embed of dist/*.js).
	err = fs.WalkDir(sdkjs.Dist, "dist", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !seen[filepath.Base(p)] {
			t.Errorf("embedded %s is built from no source", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
