# syntax=docker/dockerfile:1
# Parley image for Docker users: static binaries on distroless/static, nonroot.
# The same layout as `task image` (cmd/imagebuild), which needs no Docker:
#   /usr/local/bin/{edge,presence,archiver}, entrypoint edge, user 65532,
#   /data writable by that user (archiver SQLite, dev-mode NATS data).
#
#   docker build -t parley:dev .
#   docker run --rm -p 8080:8080 parley:dev --listen :8080 --insecure-listen-any  # dev mesh
#   docker run --rm parley:dev --help
#   docker run --rm --entrypoint /usr/local/bin/presence parley:dev --nats nats://…

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o /out/ ./cmd/edge ./cmd/presence ./cmd/archiver
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/edge /out/presence /out/archiver /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edge"]
