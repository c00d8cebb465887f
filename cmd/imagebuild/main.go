// Command imagebuild builds Parley's container image without a Docker engine
// and without pulling a base image (see internal/imagebuild), and writes it
// as an OCI image layout directory and, for one platform, a tarball that
// `docker load` / `podman load` accept.
//
//	go run ./cmd/imagebuild -oci bin/image -tar bin/parley-image.tar
//	go run ./cmd/imagebuild -platforms linux/amd64,linux/arm64 -oci bin/image
//
// Push the layout with any OCI tool, e.g. `skopeo copy oci:bin/image
// docker://REGISTRY/parley:TAG` or `crane push bin/image REGISTRY/parley:TAG`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/parley-mesh/parley/internal/imagebuild"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	module := fs.String("C", ".", "root of the Parley module")
	oci := fs.String("oci", "bin/image", "write an OCI image layout directory here (empty: none)")
	tarPath := fs.String("tar", "", "also write a docker-load tarball here (one platform only)")
	ref := fs.String("tag", "ghcr.io/parley-mesh/parley:dev", "image reference recorded in the layout/tarball")
	platforms := fs.String("platforms", "linux/"+runtime.GOARCH, "comma-separated os/arch[/variant]")
	bins := fs.String("binaries", strings.Join(imagebuild.DefaultBinaries, ","), "commands under cmd/ to include (must include edge)")
	ca := fs.String("ca-certs", defaultCA(), "PEM CA bundle to install as /etc/ssl/certs/ca-certificates.crt (empty: none)")
	version := fs.String("version", "", "org.opencontainers.image.version label")
	revision := fs.String("revision", "", "org.opencontainers.image.revision label")
	epochFlag := fs.String("epoch", os.Getenv("SOURCE_DATE_EPOCH"), "unix time stamped on files and config (default SOURCE_DATE_EPOCH, else 0)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	var epoch time.Time = time.Unix(0, 0)
	if *epochFlag != "" {
		sec, err := strconv.ParseInt(*epochFlag, 10, 64)
		if err != nil {
			return fmt.Errorf("-epoch: %w", err)
		}
		epoch = time.Unix(sec, 0)
	}
	r, err := name.ParseReference(*ref)
	if err != nil {
		return fmt.Errorf("-tag: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	idx, imgs, err := imagebuild.Build(ctx, imagebuild.Options{
		ModuleDir: *module,
		Binaries:  strings.Split(*bins, ","),
		Platforms: strings.Split(*platforms, ","),
		Epoch:     epoch,
		CACerts:   *ca,
		Version:   *version,
		Revision:  *revision,
		Log:       os.Stderr,
	})
	if err != nil {
		return err
	}
	if *oci != "" {
		d, err := imagebuild.WriteLayout(*oci, r.String(), idx, imgs)
		if err != nil {
			return err
		}
		fmt.Printf("OCI layout %s: %s@%s\n", *oci, r.String(), d)
	}
	if *tarPath != "" {
		if len(imgs) != 1 {
			return fmt.Errorf("-tar holds one platform; got %d", len(imgs))
		}
		if err := tarball.WriteToFile(*tarPath, r, imgs[0]); err != nil {
			return err
		}
		d, _ := imgs[0].Digest()
		fmt.Printf("docker tarball %s: %s (image %s)\n", *tarPath, r.String(), d)
	}
	return nil
}

func defaultCA() string {
	const p = "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}
