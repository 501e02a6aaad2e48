# bgbfs in a container: a static binary on Debian slim with fuse3.
#   docker build -t bgbfs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION \
#     bgbfs exec s3://BUCKET/PREFIX/ /cache -- ls -l /cache
# The base images are build arguments so that a build without a registry
# can name local ones; the defaults are the public images.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
# GOPROXY, if given, is where modules come from (a company proxy, or a
# file:// one).
ARG GOPROXY
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY fs ./fs
COPY cache ./cache
COPY s3backend ./s3backend
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/bgbfs ./cmd/bgbfs

FROM ${BASE_IMAGE}
# fuse3 brings fusermount3; user_allow_other lets a non-root bgbfs offer
# --allow-other to a trainer running as another user. The user bgbfs
# (uid 1000) owns /cache, so that `--user bgbfs` can mount there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && echo user_allow_other >> /etc/fuse.conf \
 && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin bgbfs \
 && install -d -o bgbfs -g bgbfs /cache
COPY --from=build /out/bgbfs /usr/local/bin/bgbfs
ENTRYPOINT ["/usr/local/bin/bgbfs"]
CMD ["--help"]
