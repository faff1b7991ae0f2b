# moatc. Everything here runs as root on a Debian 12 server without Docker Engine.
PREFIX ?= /opt/moatc
export MOATC_PREFIX := $(PREFIX)
GO ?= go
BIN := bin/moatc

.PHONY: all build install setup kube-setup rootless-user base-images demo test unit e2e vet fmt bench clean

all: build

# moatc-reaper (testcontainers' reaper, see docs/engine-api.md), moatc-pause (the idle
# process of a warm pool's sandbox, see docs/performance.md) and moatc-pod (the helper of a
# cluster run's pods, see docs/kubernetes.md) are static: each is the only file of a root or
# an image. moatc finds them next to itself.
build:
	$(GO) build -o $(BIN) ./cmd/moatc
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/moatc-reaper ./cmd/moatc-reaper
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/moatc-pause ./cmd/moatc-pause
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/moatc-pod ./cmd/moatc-pod

# The moatc binary goes into the prefix too, so one PATH entry finds everything.
install: build
	install -m 0755 $(BIN) $(PREFIX)/bin/moatc
	install -m 0755 bin/moatc-reaper $(PREFIX)/bin/moatc-reaper
	install -m 0755 bin/moatc-pause $(PREFIX)/bin/moatc-pause
	install -m 0755 bin/moatc-pod $(PREFIX)/bin/moatc-pod

# Installs what is missing into $(PREFIX): Debian packages; containerd, runsc, moatc's gVisor
# shim and buildkitd built from the Go module proxy at pinned versions. Idempotent.
# Also: the Debian packages of rootless mode, and /dev/net/tun 0666 as Debian's udev makes it.
setup:
	bash scripts/setup.sh

# The single-node Kubernetes cluster e2e/kube starts: Debian's etcd-server and ipset, and
# kube-apiserver, kubelet, kube-scheduler, kube-controller-manager, kube-router (its
# NetworkPolicy engine) and the pause binary built at pinned versions into $(PREFIX)/kube/bin
# (about 20 minutes of compiling cold). Idempotent.
kube-setup:
	bash scripts/kube-setup.sh

# Prepares one user for rootless moatc (subuid/subgid ranges; CREATE=1 makes the user), then
# runs moatc doctor as that user. Idempotent. Make takes USER from the environment too, hence
# the check that it was given on the command line.
rootless-user: build
	@[ "$(origin USER)" = "command line" ] || { echo "usage: make rootless-user USER=name [CREATE=1]" >&2; exit 2; }
	MOATC=$(CURDIR)/$(BIN) bash scripts/rootless-user.sh $(if $(CREATE),--create) $(USER)

# busybox:latest and debian:bookworm-slim, made locally (no registry needed).
base-images: build
	MOATC=$(CURDIR)/$(BIN) bash scripts/base-images.sh

# The README's first command: a command in gVisor on the managed containerd.
demo: setup install base-images
	$(PREFIX)/bin/moatc run -- sh -c 'echo "hello from $$(uname -sr) in $$(pwd)"; cat /proc/version'

# The README's second command, and what CI runs: the whole suite on the real stack.
# scripts/test.sh builds the Kubernetes binaries (kube-setup) in the background, at the lowest
# CPU priority, while the other packages are tested; e2e/kube runs last.
test: setup vet build
	MOATC=$(CURDIR)/$(BIN) bash scripts/base-images.sh --tars-only
	cd shim && $(GO) vet ./... && $(GO) test -count=1 ./...
	GO=$(GO) bash scripts/test.sh

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

fmt:
	gofmt -w $$(git ls-files '*.go')

bench: setup install base-images
	bash scripts/bench.sh

clean:
	rm -rf bin
