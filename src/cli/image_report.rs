//! What `bundle-vol`, `save` and `--clone-only` tell the user about the image they made.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use super::output;
use crate::image::volume::VolumeImage;

/// Prints a `--clone-only` result: the image's path, or JSON.
pub fn print_clone(
    json: bool,
    image: &Path,
    made: &VolumeImage,
    filter_list: Option<PathBuf>,
) -> anyhow::Result<()> {
    if json {
        output::print_json(&json!({
            "version": 1,
            "command": "bundle-vol",
            "image": image,
            "image_size": made.size,
            "files": made.copy.files,
            "bytes_copied": made.copy.bytes,
            "filtered": made.filter.filtered.len(),
            "filtered_list": filter_list,
            "phase_seconds": {
                "prepare": made.timings.prepare.as_secs_f64(),
                "filter": made.timings.filter.as_secs_f64(),
                "copy": made.timings.copy.as_secs_f64(),
                "finish": made.timings.finish.as_secs_f64(),
            },
        }))
    } else {
        println!("{}", image.display());
        Ok(())
    }
}

/// Tells the user what went into the image and what did not; writes the filter's list next to
/// the bundle. Returns the list's path, if one was written.
pub fn report_image(
    made: &VolumeImage,
    destination: &Path,
    prefix: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let c = &made.copy;
    tracing::info!(
        "image: {} files, {} directories, {} symlinks, {} hard links, {} devices, {} fifos, {} of data, {} xattrs",
        c.files,
        c.dirs,
        c.symlinks,
        c.hardlinks,
        c.devices,
        c.fifos,
        crate::progress::human_bytes(c.bytes),
        c.xattrs
    );
    if c.sockets_skipped > 0 {
        tracing::info!(
            "{} sockets skipped (they exist only while bound)",
            c.sockets_skipped
        );
    }
    for (path, fs_type) in &made.skipped_mounts {
        tracing::warn!(
            "{} is a separate {fs_type} filesystem: only its mount point is in the image (pass --all to copy it too)",
            path.display()
        );
    }
    for (path, what) in &c.lossy {
        tracing::warn!("{} not copied faithfully: {what}", path.display());
    }
    if !c.changed.is_empty() {
        tracing::warn!(
            "{} files changed while being copied (a live system); the image holds what was read",
            c.changed.len()
        );
    }
    for r in &made.boot_rewrites {
        tracing::warn!("rewrote a reference to an identifier the image could not keep: {r}");
    }
    for w in &made.fstab_warnings {
        tracing::warn!("{w}");
    }
    if let Some(prev) = &made.fstab_previous {
        tracing::info!(
            "/etc/fstab replaced; the previous one is {} in the image",
            prev.display()
        );
    }
    if let Some(boot) = &made.boot {
        tracing::info!(
            "{} image: GRUB 2 installed with {} ({})",
            made.partition,
            boot.program.display(),
            boot.grub_dir.display()
        );
        for w in &boot.warnings {
            tracing::warn!("{w}");
        }
    }
    if let Some(report) = &made.boot_check {
        if report.problems.is_empty() {
            tracing::info!(
                "boot check: no problems ({}, kernel {}, {})",
                report
                    .config
                    .as_deref()
                    .map_or("no configuration".into(), |p| p.display().to_string()),
                report.kernel_version.as_deref().unwrap_or("?"),
                report.command_line.as_deref().unwrap_or("")
            );
        }
        for p in &report.problems {
            tracing::warn!("boot check: {}: {} (fix: {})", p.code, p.message, p.fix);
        }
    }
    if let Some(g) = &made.generalize {
        for action in &g.actions {
            tracing::info!("generalize: {action}");
        }
    }
    let list = if made.filter.filtered.is_empty() && made.filter.kept.is_empty() {
        None
    } else {
        let path = destination.join(format!("{prefix}.filtered.txt"));
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        made.filter.write_to(&path)?;
        Some(path)
    };
    if let Some(path) = &list {
        tracing::info!(
            "sensitive-file filter: {} path(s) left out of the image; the list is in {} (--include PATH keeps one, --no-filter turns the filter off)",
            made.filter.filtered.len(),
            path.display()
        );
    }
    Ok(list)
}
