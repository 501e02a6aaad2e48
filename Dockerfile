# bgbfs in a container: a static binary on Alpine with fuse3.
#   docker build -t bgbfs .
#   docker run --rm -it --device /dev/fuse --cap-add SYS_ADMIN \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION \
#     bgbfs exec s3://BUCKET/PREFIX/ /cache -- ls -l /cache
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY fs ./fs
COPY cache ./cache
COPY s3backend ./s3backend
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/bgbfs ./cmd/bgbfs

FROM alpine:3.20
# fuse3 brings fusermount3; user_allow_other lets a non-root bgbfs offer
# --allow-other to a trainer running as another user.
RUN apk add --no-cache fuse3 ca-certificates \
 && echo user_allow_other >> /etc/fuse.conf \
 && mkdir -p /cache
COPY --from=build /out/bgbfs /usr/local/bin/bgbfs
ENTRYPOINT ["/usr/local/bin/bgbfs"]
CMD ["--help"]
