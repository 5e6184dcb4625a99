//! etcd's own restore tool (`etcdutl`, else `etcdctl`): which one, what it supports, running it.

use super::plan::BumpPlan;
use super::RestoreConfig;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Whether etcd's restore tool knows `--bump-revision` (etcdutl 3.5.10+, etcdctl 3.4.27+).
pub(super) fn tool_supports_bump(tool: &Path) -> bool {
    std::process::Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", "--help"])
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).contains("bump-revision")
        })
        .unwrap_or(false)
}

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// etcd's restore tool: the one named, else etcdutl, else etcdctl, from PATH.
pub(super) fn restore_tool(cfg: &RestoreConfig) -> Result<PathBuf> {
    match &cfg.restore_tool {
        Some(t) => Ok(t.clone()),
        None => find_on_path("etcdutl")
            .or_else(|| find_on_path("etcdctl"))
            .ok_or_else(|| {
                Error::config(
                    "neither etcdutl nor etcdctl is on PATH: install etcd's tools or name one with --etcd-restore-tool",
                )
            }),
    }
}

/// Runs etcd's tool on `db`, always with `--skip-hash-check`: the sha256 trailer was checked
/// here on the way (or the operator skipped the check), and the tool only strips it (etcd's
/// 3.4/3.5 builds hash without SHA-NI: their check cost 2 s per GiB).
pub(super) fn run_restore_tool(
    cfg: &RestoreConfig,
    tool: &Path,
    plan: BumpPlan,
    db: &Path,
    out: &Path,
) -> Result<()> {
    let mut cmd = std::process::Command::new(tool);
    cmd.env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(db)
        .args(["--name", &cfg.name])
        .arg("--data-dir")
        .arg(out)
        .args(["--initial-cluster", &cfg.initial_cluster])
        .args(["--initial-cluster-token", &cfg.initial_cluster_token])
        .args([
            "--initial-advertise-peer-urls",
            &cfg.initial_advertise_peer_urls.join(","),
        ]);
    cmd.arg("--skip-hash-check");
    if plan == BumpPlan::Tool {
        cmd.args(["--bump-revision", &cfg.bump_revision.to_string()]);
        if cfg.mark_compacted {
            cmd.arg("--mark-compacted");
        }
    }
    let o = cmd
        .output()
        .map_err(|e| Error::io(tool, "run etcd's snapshot restore", e))?;
    if !o.status.success() {
        return Err(Error::tool_failed(
            tool.display().to_string(),
            format!(
                "snapshot restore failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(())
}
