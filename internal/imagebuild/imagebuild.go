// Package imagebuild builds Parley's container image without a Docker engine
// and without pulling a base image: it cross-compiles the binaries statically
// (CGO_ENABLED=0, -trimpath, no build ID) and assembles an OCI image from
// scratch with go-containerregistry: one layer holding the binaries, a
// minimal /etc (passwd, group, nsswitch.conf, optionally a CA bundle) and the
// writable directories the chart mounts over. Everything in the layer has a
// fixed owner and a fixed time, so the same sources and Go toolchain give the
// same image digest.
//
// The image runs as 65532:65532 (distroless "nonroot"); its entrypoint is the
// edge, and /usr/local/bin also holds presence and archiver.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image facts the chart and the Dockerfile rely on.
const (
	BinDir     = "/usr/local/bin"
	UID        = 65532
	GID        = 65532
	HomeDir    = "/home/nonroot"
	DataDir    = "/data" // archiver SQLite / dev-mode NATS data (a volume in Kubernetes)
	Entrypoint = BinDir + "/edge"
	HTTPPort   = "8080/tcp"
)

// DefaultBinaries are the commands the image ships.
var DefaultBinaries = []string{"edge", "presence", "archiver"}

// Options say what to build.
type Options struct {
	// ModuleDir is the root of the Parley module (where go build runs).
	ModuleDir string
	// Binaries are command names under cmd/; the first need not be the
	// edge, but the entrypoint always is, so the edge must be among them.
	Binaries []string
	// Platforms are "os/arch" or "os/arch/variant"; one gives a plain image,
	// several give an image index.
	Platforms []string
	// Epoch is the time stamped on every file, the config and the history
	// (SOURCE_DATE_EPOCH by convention; zero means 1970-01-01).
	Epoch time.Time
	// CACerts is a PEM bundle copied to /etc/ssl/certs/ca-certificates.crt;
	// empty leaves it out (NATS TLS with a private CA uses --nats-tls-ca).
	CACerts string
	// Version and Revision go into the OCI labels.
	Version, Revision string
	// GoCmd is the go command (default "go").
	GoCmd string
	// Log receives build progress (may be nil).
	Log io.Writer
}

// File is one regular file or directory of the layer.
type File struct {
	Path string // absolute, slash-separated
	Mode int64  // permission bits
	Dir  bool
	Data []byte
	UID  int
	GID  int
}

// Build compiles the binaries for every platform and returns the image (one
// platform) or the image index (several), ready to write.
func Build(ctx context.Context, o Options) (v1.ImageIndex, []v1.Image, error) {
	if len(o.Binaries) == 0 {
		o.Binaries = DefaultBinaries
	}
	if !slices.Contains(o.Binaries, "edge") {
		return nil, nil, fmt.Errorf("the entrypoint is the edge: binaries must include edge")
	}
	if len(o.Platforms) == 0 {
		return nil, nil, fmt.Errorf("no platform")
	}
	var ca []byte
	if o.CACerts != "" {
		b, err := os.ReadFile(o.CACerts)
		if err != nil {
			return nil, nil, fmt.Errorf("ca bundle: %w", err)
		}
		ca = b
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var imgs []v1.Image
	for _, ps := range o.Platforms {
		p, err := v1.ParsePlatform(ps)
		if err != nil {
			return nil, nil, err
		}
		bins, err := compile(ctx, o, *p)
		if err != nil {
			return nil, nil, err
		}
		files := append(BaseFiles(ca), bins...)
		img, err := Assemble(files, *p, o)
		if err != nil {
			return nil, nil, err
		}
		imgs = append(imgs, img)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: p},
		})
	}
	return idx, imgs, nil
}

// compile builds the binaries for one platform.
func compile(ctx context.Context, o Options, p v1.Platform) ([]File, error) {
	goCmd := o.GoCmd
	if goCmd == "" {
		goCmd = "go"
	}
	tmp, err := os.MkdirTemp("", "parley-imagebuild-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", tmp + string(os.PathSeparator)}
	for _, b := range o.Binaries {
		if strings.ContainsAny(b, "/\\. ") {
			return nil, fmt.Errorf("binary %q: give a command name under cmd/", b)
		}
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = o.ModuleDir
	env := []string{"CGO_ENABLED=0", "GOOS=" + p.OS, "GOARCH=" + p.Architecture, "GOFLAGS="}
	if p.Architecture == "arm" && p.Variant != "" {
		env = append(env, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	}
	if p.Architecture == "amd64" && p.Variant != "" {
		env = append(env, "GOAMD64="+p.Variant)
	}
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if o.Log != nil {
		fmt.Fprintf(o.Log, "imagebuild: %s %s (%s)\n", goCmd, strings.Join(args, " "), strings.Join(env, " "))
	}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build for %s: %w\n%s", p.String(), err, stderr.String())
	}
	var files []File
	for _, b := range o.Binaries {
		data, err := os.ReadFile(filepath.Join(tmp, b))
		if err != nil {
			return nil, err
		}
		files = append(files, File{Path: path.Join(BinDir, b), Mode: 0o755, Data: data})
	}
	return files, nil
}

// BaseFiles is the minimal filesystem around the binaries: the users, name
// resolution for CGO-free Go, the writable directories and, if given, CA
// certificates.
func BaseFiles(caBundle []byte) []File {
	fs := []File{
		{Path: "/etc", Dir: true, Mode: 0o755},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(
			"root:x:0:0:root:/root:/sbin/nologin\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
				fmt.Sprintf("nonroot:x:%d:%d:nonroot:%s:/sbin/nologin\n", UID, GID, HomeDir))},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(
			"root:x:0:\nnobody:x:65534:\n" + fmt.Sprintf("nonroot:x:%d:\n", GID))},
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "/home", Dir: true, Mode: 0o755},
		{Path: HomeDir, Dir: true, Mode: 0o700, UID: UID, GID: GID},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: DataDir, Dir: true, Mode: 0o750, UID: UID, GID: GID},
		{Path: "/usr", Dir: true, Mode: 0o755},
		{Path: "/usr/local", Dir: true, Mode: 0o755},
		{Path: BinDir, Dir: true, Mode: 0o755},
	}
	if caBundle != nil {
		fs = append(fs,
			File{Path: "/etc/ssl", Dir: true, Mode: 0o755},
			File{Path: "/etc/ssl/certs", Dir: true, Mode: 0o755},
			File{Path: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: caBundle})
	}
	return fs
}

// LayerTar writes files as a deterministic tar stream: sorted by path,
// parents before children, fixed times, numeric owners only.
func LayerTar(files []File, epoch time.Time) ([]byte, error) {
	sorted := slices.Clone(files)
	slices.SortStableFunc(sorted, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, f := range sorted {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("layer path %q must be absolute and clean", f.Path)
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("layer path %q twice", f.Path)
		}
		seen[f.Path] = true
		if dir := path.Dir(f.Path); dir != "/" && !seen[dir] {
			return nil, fmt.Errorf("layer path %q: parent %q not declared", f.Path, dir)
		}
		h := &tar.Header{
			Name:    strings.TrimPrefix(f.Path, "/"),
			Mode:    f.Mode,
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: epoch.UTC(),
			Format:  tar.FormatPAX,
		}
		if f.Dir {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !f.Dir {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Assemble makes the OCI image for one platform from files.
func Assemble(files []File, p v1.Platform, o Options) (v1.Image, error) {
	epoch := o.Epoch.UTC()
	raw, err := LayerTar(files, epoch)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":       "parley",
		"org.opencontainers.image.description": "Parley chat mesh: edge (entrypoint), presence, archiver",
		"org.opencontainers.image.source":      "https://github.com/parley-mesh/parley",
		"org.opencontainers.image.created":     epoch.Format(time.RFC3339),
	}
	if o.Version != "" {
		labels["org.opencontainers.image.version"] = o.Version
	}
	if o.Revision != "" {
		labels["org.opencontainers.image.revision"] = o.Revision
	}
	cfg := &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      v1.Time{Time: epoch},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint:   []string{Entrypoint},
			User:         fmt.Sprintf("%d:%d", UID, GID),
			WorkingDir:   HomeDir,
			Env:          []string{"PATH=" + BinDir + ":/usr/bin:/bin", "HOME=" + HomeDir},
			ExposedPorts: map[string]struct{}{HTTPPort: {}},
			Labels:       labels,
		},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "parley imagebuild: static binaries " + strings.Join(binNames(files), ", "),
			Comment:   "built from scratch, no base image",
		},
		MediaType: types.OCILayer,
	})
}

func binNames(files []File) []string {
	var names []string
	for _, f := range files {
		if !f.Dir && path.Dir(f.Path) == BinDir {
			names = append(names, path.Base(f.Path))
		}
	}
	return names
}

// WriteLayout writes an OCI image layout at dir (replacing what is there)
// with one entry tagged ref: the image itself for one platform, the index
// for several.
func WriteLayout(dir, ref string, idx v1.ImageIndex, imgs []v1.Image) (v1.Hash, error) {
	if err := os.RemoveAll(dir); err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(dir, mutate.IndexMediaType(empty.Index, types.OCIImageIndex))
	if err != nil {
		return v1.Hash{}, err
	}
	ann := layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})
	if len(imgs) == 1 {
		if err := p.AppendImage(imgs[0], ann); err != nil {
			return v1.Hash{}, err
		}
		return imgs[0].Digest()
	}
	if err := p.AppendIndex(idx, ann); err != nil {
		return v1.Hash{}, err
	}
	return idx.Digest()
}
