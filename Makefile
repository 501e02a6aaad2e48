# bgbfs build, test, demo and benchmark entry points.
GO      ?= go
TOOLS   := $(CURDIR)/.tools
# MinIO is built from the Go module proxy at a pinned pseudo-version into a
# git-ignored folder, once: a cold build takes about 4 minutes on 2 cores.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
MINIO   := $(TOOLS)/bin/minio
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build tools test unit fuzz integration demo bench vet fmt clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/bgbfs ./cmd/bgbfs

tools: $(MINIO)

$(MINIO):
	@mkdir -p $(TOOLS)/bin
	GOBIN=$(TOOLS)/bin GOFLAGS=-mod=mod $(GO) install github.com/minio/minio@$(MINIO_VERSION)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1)
	$(GO) vet ./...

unit:
	$(GO) test -count=1 ./cmd/... ./fs/... ./s3backend/... ./cache/... 

# Each fuzz target runs briefly on top of its committed seed corpus
# (testdata/fuzz and f.Add). The budgets are execution counts (about 4 s
# each here), not durations: with a duration, Go's fuzz coordinator can
# fail a clean run with "context deadline exceeded" when a busy machine
# delays a worker at the deadline (golang/go#75804); a count only takes
# longer. Run one longer with e.g. FUZZTIME=5m.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzProblem$$' -fuzztime $(or $(FUZZTIME),20000x) ./fs/fsname
	$(GO) test -run '^$$' -fuzz '^FuzzMergeListing$$' -fuzztime $(or $(FUZZTIME),80000x) ./fs
	$(GO) test -run '^$$' -fuzz '^FuzzReadAt$$' -fuzztime $(or $(FUZZTIME),10000x) ./cache
	$(GO) test -run '^$$' -fuzz '^FuzzInflate$$' -fuzztime $(or $(FUZZTIME),30000x) ./fs/npz
	$(GO) test -run '^$$' -fuzz '^FuzzInflateCorrupt$$' -fuzztime $(or $(FUZZTIME),30000x) ./fs/npz

integration: tools build
	BGBFS_BIN=$(CURDIR)/bin/bgbfs MINIO_BIN=$(MINIO) $(GO) test -count=1 -timeout 40m ./integration/...

test: vet unit fuzz integration

# Built, then run, not `go run`: go run exits 1 when its program is
# interrupted, so make would report a clean Ctrl-C as an error. Each line
# is one command, which make runs without a shell, so the Ctrl-C reaches
# make as an interrupt (no error message, exit status 130).
demo: build
	$(GO) build -o bin/demo ./integration/demo
	bin/demo --bgbfs $(CURDIR)/bin/bgbfs

# Side by side with raw S3, s3fs and rclone (when installed); writes
# BENCHMARKS.md. Needs root (mounts, drop_caches); about 20 minutes, plus
# about 4 minutes and 7.3 GB the first time (workload i's archives).
BENCHFLAGS ?=
bench: tools build
	BGBFS_BIN=$(CURDIR)/bin/bgbfs $(GO) run ./integration/bench --out BENCHMARKS.md $(BENCHFLAGS)

clean:
	rm -rf bin integration/.work
