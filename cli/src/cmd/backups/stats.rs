//! `bbsync backups stats`.

use std::process::ExitCode;

use bbsync_store::backup::Repo;

use crate::{Ctx, output};

/// `backups stats`: sizes and counts of a repository.
pub(super) fn stats(ctx: &Ctx, repo: &Repo) -> anyhow::Result<ExitCode> {
    let s = repo.stats()?;
    if ctx.json {
        output::json(ctx, &s)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        ctx,
        "repository:       {} ({}, format {})",
        s.repo,
        s.repo_id,
        s.format
    );
    outln!(ctx, "snapshots:        {}", s.snapshots);
    outln!(ctx, "manifests:        {}", s.manifests);
    outln!(
        ctx,
        "chunks:           {} ({})",
        s.chunks,
        output::size(s.chunk_bytes)
    );
    if s.format >= 2 {
        outln!(
            ctx,
            "packs:            {} data, {} manifest; {} index files",
            s.data_packs,
            s.manifest_packs,
            s.index_files
        );
    }
    outln!(
        ctx,
        "snapshots hold:   {} sealed, {} plaintext (deduplicated {:.1}x)",
        output::size(s.snapshot_bytes),
        output::size(s.plaintext_bytes),
        s.snapshot_bytes as f64 / (s.chunk_bytes.max(1)) as f64
    );
    outln!(ctx, "identity escrows: {}", s.identity_escrows);
    Ok(ExitCode::SUCCESS)
}
