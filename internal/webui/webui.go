// Package webui is the chat page an edge serves at / (on by default in the
// dev mesh, --ui elsewhere): a static page that uses the TypeScript SDK
// (sdk/js, its committed build), embedded in the binary, so the page is
// same-origin with /ws and needs no dev server and no Node.
package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	sdkjs "github.com/parley-mesh/parley/sdk/js"
)

//go:embed static
var static embed.FS

// Options is what the page must know about the edge serving it.
type Options struct {
	// Insecure: the edge accepts ?user=NAME, so the page asks for a name;
	// otherwise it asks for a JWT.
	Insecure bool
}

// file is one served file, read once at start.
type file struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the page: /, its assets, /sdk/*.js (the SDK's ES modules)
// and /config.json (Options, for the page). Anything else is 404.
func Handler(o Options) (http.Handler, error) {
	files := map[string]file{}
	add := func(name string, body []byte) {
		ctype := mime.TypeByExtension(path.Ext(name))
		if strings.HasSuffix(name, ".js") {
			// The platform's MIME table may lack .js or say
			// application/javascript; module scripts need a JavaScript type.
			ctype = "text/javascript; charset=utf-8"
		}
		sum := sha256.Sum256(body)
		files[name] = file{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	for _, src := range []struct {
		fsys   fs.FS
		root   string
		prefix string
	}{{static, "static", ""}, {sdkjs.Dist, "dist", "sdk/"}} {
		err := fs.WalkDir(src.fsys, src.root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(src.fsys, p)
			if err != nil {
				return err
			}
			add(src.prefix+strings.TrimPrefix(p, src.root+"/"), b)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("webui: read embedded %s: %w", src.root, err)
		}
	}
	if _, ok := files["sdk/index.js"]; !ok {
		return nil, fmt.Errorf("webui: the SDK build is missing (sdk/js/dist/index.js): run go generate ./sdk/js")
	}
	cfg, err := json.Marshal(map[string]bool{"insecure": o.Insecure})
	if err != nil {
		return nil, fmt.Errorf("webui: config: %w", err)
	}
	add("config.json", cfg)
	files[""] = files["index.html"]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		// The page runs with a user's name or token: no other origin may
		// frame it (clickjacking), script it or receive its URLs.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; connect-src 'self'; "+
			"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// Revalidated every time (cheap: the ETag), so a page never runs
		// with an SDK of another build after an upgrade.
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	}), nil
}
