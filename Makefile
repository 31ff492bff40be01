# vessel: containerd shim v2 runtime (io.containerd.vessel.v2).
#
#   make deps      install system packages (Debian bookworm), idempotent
#   make deps-vm   QEMU from bookworm-backports
#   make build     release build of containerd-shim-vessel-v2
#   make agent     release build of vessel-agent (static), the guest's PID 1
#   make guest     the guest image: kernel and initramfs into build/guest (cached)
#   make install   shim into $(PREFIX)/bin, configuration.toml into /etc/vessel, the guest
#                  image (and the modules it loads on demand) into /usr/share/vessel
#   make images    offline test images into build/images
#   make test      unit tests, then integration tests against a private containerd
#   make demo      run busybox under vessel in a throw-away private containerd
#   make demo-vm   the same on the vm backend: busybox in its own QEMU virtual machine
#   make bench     startup time / shim memory vs runc, conversion benchmark, guest boot
#   make fmt | lint | clean
#
# Integration tests get the private containerd's directory in
# VESSEL_TEST_CONTAINERD (see tests/common/mod.rs, scripts/containerd.sh).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

REPO := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
SHIM := containerd-shim-vessel-v2
# The release shim links glibc statically: no ld.so and no shared libc mapped in every shim,
# which keeps an idle shim's resident memory small. It stays position independent (ASLR), with
# its relative relocations packed (DT_RELR, glibc >= 2.36): the ~18,000 RELA entries the
# start-up code reads in full cost every shim about 630 KiB of resident memory, their RELR form
# fits in 5 KiB. An explicit --target keeps the flags off build scripts and proc-macros.
TARGET ?= $(shell rustc -vV | sed -n 's/^host: //p')
# Wherever cargo puts its output (CARGO_TARGET_DIR, .cargo/config.toml's build.target-dir).
TARGET_DIR := $(shell cd '$(REPO)' && $(CARGO) metadata --no-deps --format-version 1 2>/dev/null | \
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
ifeq ($(TARGET_DIR),)
TARGET_DIR := $(REPO)/target
endif
DEBUG_DIR := $(TARGET_DIR)/debug
RELEASE_DIR := $(TARGET_DIR)/$(TARGET)/release
STATIC_BUILD = RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" $(CARGO) build --release --target $(TARGET)
RELEASE_BUILD = $(STATIC_BUILD) --bin $(SHIM)
AGENT := $(RELEASE_DIR)/vessel-agent
GUEST_DIR = $(BUILD_DIR)/guest
# The guest's crun comes from Debian's unstable suite with the libraries it links: bookworm's
# (1.8.1) refuses the spec version containerd 2.x writes (1.2.x). Unpacked, never installed.
GUEST_SID = $(BUILD_DIR)/guest-sid
GUEST_SID_PACKAGES := crun libc6 libblake3-0 libcap2 libjson-c5 libseccomp2 libsystemd0
SHARE_DIR := $(DESTDIR)/usr/share/vessel
BUILD_DIR := $(REPO)/build
IMAGES_DIR ?= $(BUILD_DIR)/images
CONTAINERD_SH := $(REPO)/scripts/containerd.sh
# Short (unix socket paths are limited to ~108 bytes) and stable per
# checkout, so a crashed run is cleaned up by the next one.
TEST_CONTAINERD ?= /tmp/vessel-test-$(shell printf %s '$(REPO)' | sha256sum | cut -c1-8)
TEST_THREADS ?= 2
INTEGRATION_TESTS ?= $(wildcard $(REPO)/tests/*.rs)
export IMAGES_DIR

.PHONY: deps deps-vm build agent guest install images test unit-test integration-test \
        demo demo-vm bench fmt lint clean containerd-start containerd-stop

deps:
	$(REPO)/scripts/deps.sh base

deps-vm: deps
	$(REPO)/scripts/deps.sh vm

build:
	$(RELEASE_BUILD)

# The agent's built-in runtime links libseccomp: statically, as the agent is (libseccomp-sys
# links the shared library unless told otherwise, which leaves a static agent that crashes).
SECCOMP_LIB_DIR = $(patsubst %/,%,$(dir $(shell gcc -print-file-name=libseccomp.a)))

agent:
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH='$(SECCOMP_LIB_DIR)' $(STATIC_BUILD) -p vessel-agent

# Rebuilt only when the agent, the script, the installed kernel or the guest's crun changed.
guest: deps-vm agent
	$(REPO)/scripts/deps.sh sid $(GUEST_SID) $(GUEST_SID_PACKAGES)
	@$(MAKE) --no-print-directory $(GUEST_DIR)/initramfs.cpio

$(GUEST_DIR)/initramfs.cpio: $(AGENT) $(REPO)/scripts/build-guest.sh $(wildcard /boot/vmlinuz-*) $(GUEST_SID)/.packages
	$(REPO)/scripts/build-guest.sh $(GUEST_DIR) $(AGENT) $(GUEST_SID)

install: build guest
	install -D -m 0755 $(RELEASE_DIR)/$(SHIM) $(DESTDIR)$(PREFIX)/bin/$(SHIM)
	install -D -m 0644 $(REPO)/config/configuration.toml $(DESTDIR)/etc/vessel/configuration.toml
	install -D -m 0644 $(REPO)/config/configuration-vm.toml $(DESTDIR)/etc/vessel/configuration-vm.toml
	install -D -m 0644 $(GUEST_DIR)/vmlinux $(SHARE_DIR)/vmlinux
	install -D -m 0644 $(GUEST_DIR)/initramfs.cpio $(SHARE_DIR)/initramfs.img
	install -D -m 0644 $(GUEST_DIR)/runtime-features.json $(SHARE_DIR)/runtime-features.json
	rm -rf $(SHARE_DIR)/modules
	cp -R $(GUEST_DIR)/modules $(SHARE_DIR)/modules

images:
	$(REPO)/scripts/build-images.sh $(IMAGES_DIR)

# The integration tests need the debug shim and agent, and the guest image (tests/guest.rs).
test: deps guest
	$(CARGO) build --workspace
	$(MAKE) --no-print-directory unit-test
	$(MAKE) --no-print-directory integration-test

unit-test:
	$(CARGO) test --workspace --lib --bins

# The integration tests run twice: against the system's containerd (1.6 on bookworm) and
# against containerd 2.x, Debian unstable's, unpacked under build/ and never installed
# (scripts/deps.sh sid). Each pass starts its own private containerd, runs tests/*.rs against
# it, then the ctr and CRI tests again on the vm backend (booted VMs on 1.6, VMs cloned from a
# template on 2.x), and stops it again. Both are always
# stopped (also on failure or Ctrl-C); a failed pass does not skip the other one, and the exit
# code says whether both passed.
CONTAINERD_2 := $(BUILD_DIR)/containerd-2
TEST_CONTAINERD_2 ?= $(TEST_CONTAINERD)-2
# Tests that never talk to containerd (the guest agent as a host process, the guest under
# QEMU): the first pass runs them, the second leaves them out.
CONTAINERD_FREE_TESTS := agent guest
TEST_NAMES = $(basename $(notdir $(INTEGRATION_TESTS)))

integration-test:
	@if [ -z '$(INTEGRATION_TESTS)' ]; then \
		echo "integration-test: no tests/*.rs"; exit 0; fi; \
	$(REPO)/scripts/deps.sh sid '$(CONTAINERD_2)' containerd; \
	trap '$(CONTAINERD_SH) stop "$(TEST_CONTAINERD)"; $(CONTAINERD_SH) stop "$(TEST_CONTAINERD_2)"' EXIT; \
	trap 'exit 130' INT TERM; \
	summary=""; rc=0; \
	pass() { \
		local dir=$$1 bin=$$2 tests=$$3 vm=$$4 start=$$SECONDS version ok=1; \
		if ! SHIM_DIR=$(DEBUG_DIR) CONTAINERD_BIN_DIR="$$bin" $(CONTAINERD_SH) start "$$dir"; then \
			summary="$$summary== containerd $${bin:-system}: did not start"$$'\n'; return 1; fi; \
		version=$$(cat "$$dir/containerd.version"); \
		echo "== containerd $$version ($${bin:-system}): tests $$tests"; \
		VESSEL_TEST_CONTAINERD="$$dir" VESSEL_GUEST_DIR='$(GUEST_DIR)' \
			$(CARGO) test --no-fail-fast $$(printf -- '--test %s ' $$tests) -- --test-threads=$(TEST_THREADS) || ok=0; \
		if [ $$ok = 1 ]; then \
			echo "== containerd $$version: the ctr and CRI tests again, every container in a VM (VESSEL_TEST_BACKEND=$$vm)"; \
			VESSEL_TEST_CONTAINERD="$$dir" VESSEL_GUEST_DIR='$(GUEST_DIR)' VESSEL_TEST_BACKEND=$$vm \
				$(CARGO) test --no-fail-fast --test ctr --test cri -- --test-threads=$(TEST_THREADS) || ok=0; \
		fi; \
		$(CONTAINERD_SH) stop "$$dir" || ok=0; \
		summary="$$summary== containerd $$version: $$([ $$ok = 1 ] && echo passed || echo FAILED) in $$((SECONDS - start)) s"$$'\n'; \
		[ $$ok = 1 ]; \
	}; \
	pass '$(TEST_CONTAINERD)' '' '$(TEST_NAMES)' vm || rc=1; \
	pass '$(TEST_CONTAINERD_2)' '$(CONTAINERD_2)/usr/bin' \
		'$(filter-out $(CONTAINERD_FREE_TESTS),$(TEST_NAMES))' vm-template || rc=1; \
	printf '%s' "$$summary"; \
	exit $$rc

# A private containerd for poking around by hand (debug shim):
#   make containerd-start && eval "$$(scripts/containerd.sh env $(TEST_CONTAINERD))"
containerd-start:
	SHIM_DIR=$(DEBUG_DIR) $(CONTAINERD_SH) start '$(TEST_CONTAINERD)'
	$(CONTAINERD_SH) env '$(TEST_CONTAINERD)'

containerd-stop:
	$(CONTAINERD_SH) stop '$(TEST_CONTAINERD)'

demo: deps build
	@dir=$$(mktemp -d /tmp/vessel-demo.XXXXXX); \
	trap '$(CONTAINERD_SH) stop "$$dir"' EXIT; \
	trap 'exit 130' INT TERM; \
	SHIM_DIR=$(RELEASE_DIR) $(CONTAINERD_SH) start "$$dir"; \
	echo '$$ ctr run --rm --runtime io.containerd.vessel.v2 docker.io/library/busybox:latest demo-'$$$$' echo "hello from vessel"'; \
	ctr --address "$$dir/containerd.sock" run --rm --runtime io.containerd.vessel.v2 \
		docker.io/library/busybox:latest demo-$$$$ echo "hello from vessel" </dev/null

# The same in a VM: the guest's kernel answers `uname -r`, not the host's.
demo-vm: deps-vm build guest
	@dir=$$(mktemp -d /tmp/vessel-demo.XXXXXX); \
	trap '$(CONTAINERD_SH) stop "$$dir"' EXIT; \
	trap 'exit 130' INT TERM; \
	SHIM_DIR=$(RELEASE_DIR) VESSEL_GUEST_DIR='$(GUEST_DIR)' $(CONTAINERD_SH) start "$$dir"; \
	echo "host kernel: $$(uname -r)"; \
	echo '$$ ctr run --rm --runtime io.containerd.vessel.v2 --runtime-config-path '"$$dir"'/vessel-vm.toml docker.io/library/busybox:latest demo-'$$$$' uname -r'; \
	ctr --address "$$dir/containerd.sock" run --rm --runtime io.containerd.vessel.v2 \
		--runtime-config-path "$$dir/vessel-vm.toml" \
		docker.io/library/busybox:latest demo-$$$$ uname -r </dev/null

bench: deps build guest
	SHIM_DIR=$(RELEASE_DIR) VESSEL_GUEST_DIR='$(GUEST_DIR)' VESSEL_AGENT='$(AGENT)' \
		$(REPO)/scripts/bench.sh

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	for f in $(REPO)/scripts/*.sh $(REPO)/.ci/run; do bash -n "$$f"; done
	if command -v shellcheck >/dev/null; then shellcheck -S warning $(REPO)/scripts/*.sh $(REPO)/.ci/run; fi

clean:
	$(CONTAINERD_SH) stop '$(TEST_CONTAINERD)'
	$(CONTAINERD_SH) stop '$(TEST_CONTAINERD_2)'
	$(CARGO) clean
	rm -rf $(BUILD_DIR)
