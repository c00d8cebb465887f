package imagebuild

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

func fakeFiles(payload string) []File {
	return append(BaseFiles([]byte("-----BEGIN CERTIFICATE-----\n")),
		File{Path: BinDir + "/edge", Mode: 0o755, Data: []byte(payload)})
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The same inputs give the same image digest; any change of content or
// epoch changes it.
func TestAssembleIsReproducible(t *testing.T) {
	epoch := time.Unix(1700000000, 0)
	a, err := Assemble(fakeFiles("binary"), amd64, Options{Epoch: epoch, Version: "1.0"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Assemble(fakeFiles("binary"), amd64, Options{Epoch: epoch, Version: "1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, a) != digest(t, b) {
		t.Fatalf("same inputs, different digests: %s %s", digest(t, a), digest(t, b))
	}
	c, _ := Assemble(fakeFiles("binary2"), amd64, Options{Epoch: epoch, Version: "1.0"})
	d, _ := Assemble(fakeFiles("binary"), amd64, Options{Epoch: epoch.Add(time.Second), Version: "1.0"})
	if digest(t, c) == digest(t, a) || digest(t, d) == digest(t, a) {
		t.Fatal("content or epoch change did not change the digest")
	}
	// Validate what consumers see: the image as written to and read back
	// from a layout (in memory, go-containerregistry's tarball layer
	// descriptor carries an empty annotations map the JSON drops).
	dir := filepath.Join(t.TempDir(), "oci")
	h, err := WriteLayout(dir, "parley:test", nil, []v1.Image{a})
	if err != nil {
		t.Fatal(err)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ii.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	mt, _ := back.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
}

func TestLayerTarRejectsBadPaths(t *testing.T) {
	for _, fs := range [][]File{
		{{Path: "etc/passwd"}},
		{{Path: "/etc/../passwd"}},
		{{Path: "/nodir/file"}},
		{{Path: "/a", Dir: true}, {Path: "/a", Dir: true}},
	} {
		if _, err := LayerTar(fs, time.Unix(0, 0)); err == nil {
			t.Errorf("LayerTar(%+v) accepted", fs)
		}
	}
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

func extract(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]entry{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out["/"+strings.TrimSuffix(h.Name, "/")] = entry{h, b}
	}
}

func checkConfig(t *testing.T, img v1.Image) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cf.Config.User)
	}
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/edge" {
		t.Errorf("entrypoint %q", cf.Config.Entrypoint)
	}
	if _, ok := cf.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("8080/tcp not exposed: %v", cf.Config.ExposedPorts)
	}
}

func TestLayerContents(t *testing.T) {
	img, err := Assemble(fakeFiles("bin"), amd64, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkConfig(t, img)
	files := extract(t, img)
	for p, want := range map[string]struct {
		mode     int64
		uid, gid int
	}{
		"/usr/local/bin/edge": {0o755, 0, 0},
		"/tmp":                {0o1777, 0, 0},
		"/home/nonroot":       {0o700, UID, GID},
		"/data":               {0o750, UID, GID},
		"/etc/passwd":         {0o644, 0, 0},
	} {
		e, ok := files[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		if e.hdr.Mode != want.mode || e.hdr.Uid != want.uid || e.hdr.Gid != want.gid {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", p, e.hdr.Mode, e.hdr.Uid, e.hdr.Gid, want.mode, want.uid, want.gid)
		}
		if !e.hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v", p, e.hdr.ModTime)
		}
	}
	if !strings.Contains(string(files["/etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("passwd lacks nonroot: %q", files["/etc/passwd"].data)
	}
}

// TestImageRunsEdge builds the real image (edge only, to keep CI fast),
// writes and re-reads the OCI layout, extracts the entrypoint binary and runs
// it: the image's entrypoint is a working, static edge.
func TestImageRunsEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the edge binary; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("runs the linux binary it builds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	idx, imgs, err := Build(ctx, Options{
		ModuleDir: root,
		Binaries:  []string{"edge"},
		Platforms: []string{"linux/" + runtime.GOARCH},
		Epoch:     time.Unix(0, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	want, err := WriteLayout(filepath.Join(dir, "oci"), "parley:test", idx, imgs)
	if err != nil {
		t.Fatal(err)
	}

	// Read it back as a consumer of the layout would.
	ii, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want ||
		im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "parley:test" {
		t.Fatalf("index.json: %+v (want %s)", im.Manifests, want)
	}
	img, err := ii.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	checkConfig(t, img)
	cf, _ := img.ConfigFile()
	if cf.Architecture != runtime.GOARCH || cf.OS != "linux" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	files := extract(t, img)
	e, ok := files[cf.Config.Entrypoint[0]]
	if !ok {
		t.Fatalf("entrypoint %s not in the layer", cf.Config.Entrypoint[0])
	}
	// Static: no ELF interpreter (PT_INTERP) means no dynamic loader needed.
	if strings.Contains(string(e.data), "/lib64/ld-linux") || strings.Contains(string(e.data), "/lib/ld-linux") {
		t.Error("edge binary references a dynamic loader: not static")
	}
	bin := filepath.Join(dir, "edge")
	if err := os.WriteFile(bin, e.data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("edge --help: %v\n%s", err, out)
	}
	for _, flag := range []string{"-drain-timeout", "-nats", "-listen", "-stream-replicas"} {
		if !strings.Contains(string(out), flag) {
			t.Errorf("edge --help does not mention %s:\n%s", flag, out)
		}
	}
	// And it refuses to serve a real cluster without auth: the binary's own
	// logic runs, not just its flag parser.
	cmd := exec.CommandContext(ctx, bin, "--nats", "nats://127.0.0.1:1")
	cmd.Env = []string{"HOME=" + dir}
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "jwt") {
		t.Errorf("edge without auth: err %v, output %s", err, out)
	}
}
