# ferry: a small KVM hypervisor with live migration.
#
#   make demo     build everything and live-migrate a running guest (needs /dev/kvm)
#   make test     build everything and run every test (unit + real guests)
#   make build    bin/ferry
#   make guest    the guest kernel and initramfs (guest-images/out)
#   make deps     install the Debian packages the build and tests need (root)
#   make unit     unit tests only (no guest image needed)
#   make fuzz     run each fuzz target for FUZZTIME (default 6s; make test runs it)
#   make fuzz-long  run each fuzz target for 10 minutes (FUZZTIME=10m)
#   make clean    remove bin/ and guest-images/out
#   make boot     build everything and boot the guest to its marker and power-off
#   make help     this text

GO       ?= go
BIN      := bin/ferry
GUESTOUT := guest-images/out
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Debian packages: the guest image build (see guest-images/README.md), the
# benchmark peer, and the tools the integration tests use.
DEB_PACKAGES := make gcc libc6-dev bc flex bison libelf-dev patch diffutils \
	xz-utils lz4 binutils linux-source-6.1 musl-tools busybox-static cpio \
	qemu-system-x86 iproute2 e2fsprogs

# Go test timeouts: integration tests boot real guests on an emulating KVM.
TEST_TIMEOUT ?= 40m

.PHONY: all build guest deps test unit integration fuzz fuzz-long demo boot clean help FORCE

all: build guest

help:
	@sed -n '3,14s/^# \{0,1\}//p' Makefile

build: $(BIN)

$(BIN): FORCE
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ferry

guest: deps
	$(MAKE) -C guest-images

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "  APT    $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
		else \
			echo "missing Debian packages:$$missing"; echo "  sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./kvm/... ./vmm/... ./devices/... ./migrate/... ./cmd/...

integration: build guest
	FERRY_BIN=$(CURDIR)/$(BIN) FERRY_GUEST_DIR=$(CURDIR)/$(GUESTOUT) \
		$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./tests/...

test: build guest
	$(GO) vet ./...
	FERRY_BIN=$(CURDIR)/$(BIN) FERRY_GUEST_DIR=$(CURDIR)/$(GUESTOUT) \
		$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

# Fuzz targets (package:function), each run for FUZZTIME on top of its seed
# corpus in the package's testdata/fuzz. Go spends up to a minute minimizing
# each new interesting input (-fuzzminimizetime), during which the target
# makes no progress: FUZZMINTIME caps that, so the time goes to fuzzing.
# make fuzz (in make test) keeps the whole run near its old 90 s: 12
# targets x 6 s, plus a second or so each to start.
FUZZTIME    ?= 6s
FUZZMINTIME ?= 1s
FUZZ_TARGETS := migrate:FuzzRecordDecoder migrate:FuzzReceiver migrate:FuzzReadSnapshot vmm:FuzzDecodeState \
	migrate:FuzzPages migrate:FuzzDecompress \
	devices:FuzzVirtqueue devices:FuzzSerialRestore devices:FuzzCMOSRestore devices:FuzzI8042Restore \
	devices:FuzzVirtioBlkRestore devices:FuzzVirtioNetRestore

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "  FUZZ   $$t ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) ./$${t%%:*} || exit 1; \
	done

fuzz-long:
	$(MAKE) fuzz FUZZTIME=10m

demo: build guest
	FERRY=$(BIN) tests/demo.sh

boot: build guest
	$(BIN) run --memory 128M --cmdline "ferry.run=poweroff"

# make bench: ferry vs QEMU live migration on the guest's false-dirty
# workloads, auto-converge and post-copy on a guest that writes faster
# than the link, and a 1 GiB guest (bench/migbench: about 45 min here, a
# few more with a clean guest build). Installs the Debian
# packages (qemu-system-x86 among them) and builds ferry and the guest first.
# Writes bench/results.json, bench/mix-iterations.svg and the complete
# output to bench/results/migbench.txt. BENCH_FLAGS go to bench/migbench
# (e.g. BENCH_FLAGS="-workloads mix -bws 32"; -h lists them).
BENCH_FLAGS ?=
.PHONY: bench
bench: deps build guest
	$(GO) build -o bin/migbench ./bench/migbench
	bash -c 'set -o pipefail; bin/migbench $(BENCH_FLAGS) -markdown BENCHMARKS.md 2>&1 | tee -i bench/results/migbench.txt'

# make bench-scale: ferry's migration at scale without a guest
# (bench/scale): fake guest memory of 1, 4 and 8 GiB through the real
# sender and receiver over loopback TCP and mutual TLS, 1, 2 and 4
# connections, against a plain loopback copy, memcpy and AES-GCM measured
# in the same run. No KVM, no guest image; the 8 GiB case needs about
# 12 GiB of free memory. Writes the complete output to
# bench/results/scale.txt and the results to bench/results/scale.json.
# BENCH_SCALE_FLAGS go to bench/scale (e.g. BENCH_SCALE_FLAGS="-sizes 1
# -tls off"; -h lists them).
BENCH_SCALE_FLAGS ?=
.PHONY: bench-scale
bench-scale:
	$(GO) build -ldflags "-X main.commit=$(VERSION)" -o bin/scale ./bench/scale
	bash -c 'set -o pipefail; bin/scale -json bench/results/scale.json $(BENCH_SCALE_FLAGS) 2>&1 | tee -i bench/results/scale.txt'

clean:
	rm -rf bin $(GUESTOUT)

FORCE:
