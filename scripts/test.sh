#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what is missing, checks format and
# lints, then runs every test against real etcd 3.4.23 / 3.5.1 and a real S3 server (moto).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export ETCDBR_TOOLS_DIR=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# the image, the shipped scripts and the chart: hadolint, shellcheck, and every manifest of three value sets against the
# Kubernetes schemas (no helm binary needed)
"$ETCDBR_TOOLS_DIR/venv/bin/hadolint" Dockerfile
"$ETCDBR_TOOLS_DIR/venv/bin/shellcheck" scripts/etcd-bootstrap.sh scripts/test.sh scripts/install-test-deps.sh .ci/run
# the architecture: no module or folder cycles (src/lib.rs lists the folders in their order)
"$ETCDBR_TOOLS_DIR/venv/bin/python" scripts/module-graph.py
cargo build --locked --bin etcdbrctl
"$ETCDBR_TOOLS_DIR/venv/bin/python" scripts/test-chart.py "$ETCDBR_TOOLS_DIR/bin/chart-render" target/debug/etcdbrctl
cargo test --locked -- --test-threads 2
