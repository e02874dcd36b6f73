//! `cellsci notebook run`: the papermill-style executor (skeleton: filled in by the kernel issue).
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct NotebookRunArgs {
    /// The notebook to run.
    pub input: PathBuf,
    /// Where to write the executed notebook (default: overwrite nothing; INPUT with `.out.ipynb`).
    pub output: Option<PathBuf>,
}

pub async fn run(_args: &NotebookRunArgs, _quiet: bool) -> anyhow::Result<u8> {
    anyhow::bail!("cellsci notebook run is not implemented yet")
}
