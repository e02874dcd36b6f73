//! The command line, as phase-2 users type it, and the dispatch to the Lua runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::exit::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK};
use crate::lua::ctx::HostCtx;
use crate::lua::{self, Runtime};

/// The config file a phase-2 user keeps next to their run.
pub const DEFAULT_CONFIG: &str = "generate_execution_config.json";

/// `cellsci -V`: the version and the commit it was built from (build.rs; "unknown" without git).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CELLSCI_GIT_COMMIT"), ")");
/// `cellsci --version`: also where the bundled scripts come from.
#[cfg(debug_assertions)]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CELLSCI_GIT_COMMIT"),
    ")\nbundled scripts, stdlib and prompts: read from ",
    env!("CARGO_MANIFEST_DIR"),
    " while that folder exists (a debug build), else embedded"
);
#[cfg(not(debug_assertions))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CELLSCI_GIT_COMMIT"),
    ")\nbundled scripts, stdlib and prompts: embedded in the binary"
);

#[derive(Parser, Debug)]
#[command(
    name = "cellsci",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Turn research ideas into executed, repaired and scored Jupyter notebooks; \
policy in Lua scripts, mechanisms in Rust."
)]
pub struct Cli {
    /// The phase-2 config file (JSON).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More output (-v: debug detail and Lua tracebacks, -vv: trace).
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only the plain event lines and errors; no progress bars.
    #[arg(short = 'q', long = "quiet", global = true)]
    pub quiet: bool,
    /// A folder searched first for Lua modules (your own pipeline.lua, success.lua, ...).
    #[arg(long = "scripts", global = true, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
    /// Record every LLM exchange to this cassette file, appended to when it exists (the API key is never
    /// written).
    #[arg(long = "record", global = true, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Replay LLM exchanges from this cassette instead of calling the API.
    #[arg(long = "replay", global = true, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GenerateArgs {
    /// Design the notebook from the phase-1 ideas (idea.json).
    #[arg(long = "use-idea")]
    pub use_idea: bool,
    /// The generation prompt file (YAML); overrides prompt_branch.prompt_file.
    #[arg(long = "prompt-file", value_name = "PATH")]
    pub prompt_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Continue the loop recorded in this phase2_loop_summary_*.json (after a crash, kill or Ctrl-C):
    /// finished iterations are kept and the next ones are appended to the same summary.
    #[arg(long = "resume", value_name = "SUMMARY")]
    pub resume: Option<PathBuf>,
    /// Exit 1 when the loop ran to its end but no iteration met the success criterion (the default is 0,
    /// which CellScientist's runner needs to go on to phase 3).
    #[arg(long = "fail-if-unmet")]
    pub fail_if_unmet: bool,
    /// The search strategy: serial (the default: one iteration at a time), best_of_n, tree, or a Lua file
    /// of your own (FILE.lua returning {run = function(L, opts) ... end}).
    #[arg(long = "strategy", value_name = "NAME|FILE.lua")]
    pub strategy: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct TrialArgs {
    /// The trial folder to work on (default: the newest).
    #[arg(long = "trial", value_name = "DIR")]
    pub trial: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Loop generate → execute → analyze until the success criterion holds or iterations run out.
    Run(RunArgs),
    /// Generate a notebook (notebook_prompt.ipynb) in a new trial folder.
    Generate(GenerateArgs),
    /// Execute a trial's notebook, repairing failing cells.
    Execute(TrialArgs),
    /// Score a trial's metrics.json and write experiment_report.md.
    Analyze(TrialArgs),
    /// Run a Lua file with every primitive loaded; `arg` holds the arguments.
    Script {
        /// The Lua file.
        file: PathBuf,
        /// Arguments for the script (`arg[1]`, `arg[2]`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Work with the bundled scripts, stdlib and prompts.
    #[command(subcommand)]
    Scripts(ScriptsCommand),
    /// Notebook tools.
    #[command(subcommand)]
    Notebook(NotebookCommand),
    /// Write the bundled demo (config, stage-1 data, recorded LLM replies) into DIR and run it offline.
    Demo(DemoArgs),
    /// Start a project: write a commented phase-2 config and the bundled prompt files into DIR.
    Init {
        /// The folder (default: the current folder); files that exist are never overwritten.
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// (Re)build the run page (run.html beside the summary) of a loop, finished or killed, and print its
    /// path.
    View {
        /// The loop summary (phase2_loop_summary_*.json).
        summary: PathBuf,
    },
    /// Internal: the watchdog that kills what a killed cellsci's kernels left behind (see
    /// `kernel::reaper`). Started by cellsci itself, never by a user.
    #[command(name = "__kernel-reaper", hide = true)]
    KernelReaper { host: String, dir_prefix: String },
    /// Internal: saves the notebook `notebook run` executes, from changes sent over a pipe (see
    /// `notebook::saver`). Started by cellsci itself, never by a user.
    #[command(name = "__notebook-saver", hide = true)]
    NotebookSaver { out: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The folder to write the demo into; it must not exist or be empty.
    #[arg(value_name = "DIR", default_value = crate::start::DEFAULT_DEMO_DIR)]
    pub dir: PathBuf,
    /// A Python with ipykernel, numpy and h5py for the kernel (default: cellsci makes a venv with them
    /// once, from PyPI, in ~/.cache/cellsci/kernels).
    #[arg(long = "python", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Only write the demo's files; run it later with `cellsci -c DIR/generate_execution_config.json run
    /// --use-idea`.
    #[arg(long = "no-run")]
    pub no_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum ScriptsCommand {
    /// Write the bundled scripts/, stdlib/ and prompts/ into DIR for editing.
    Export {
        dir: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// List the bundled files.
    List,
}

#[derive(Subcommand, Debug)]
pub enum NotebookCommand {
    /// Execute a notebook cell by cell in a kernel, saving after every cell.
    Run(Box<crate::notebook_run::NotebookRunArgs>),
}

/// Run the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> u8 {
    if let Command::KernelReaper { host, dir_prefix } = &cli.command {
        return crate::kernel::reaper::watchdog_main(host, dir_prefix);
    }
    if let Command::NotebookSaver { out } = &cli.command {
        return crate::notebook::saver::saver_main(out);
    }
    // This executable can serve as the kernel watchdog and the notebook saver.
    crate::kernel::reaper::enable();
    crate::notebook::saver::enable();
    init_logging(&cli);
    crate::ui::set_quiet(cli.quiet);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let verbose = cli.verbose > 0;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async move {
        crate::signals::install();
        dispatch(cli).await
    });
    crate::signals::kill_children();
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            // a -v traceback keeps its lines; each is guarded like every stderr line
            crate::ui::elines(&format!("error: {}", lua::describe_error(&e, verbose)));
            EXIT_ERROR
        }
    };
    if crate::signals::interrupted() && code != EXIT_OK {
        return EXIT_INTERRUPTED;
    }
    code
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLSCI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("cellsci={level},warn")));
    // No colour codes when stderr is a pipe or file (a runner's phase2.log is read by people and parsers).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::ui::TracingWriter { ansi })
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

fn load_config(cli: &Cli, required: bool) -> Result<Option<Arc<crate::config::Config>>> {
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                if required {
                    anyhow::bail!("no config file: pass --config FILE (there is no {DEFAULT_CONFIG} in this folder)");
                }
                return Ok(None);
            }
            p
        }
    };
    Ok(Some(Arc::new(crate::config::load(&path)?)))
}

/// The folders `--scripts DIR` adds to the module search: DIR itself, and DIR/scripts and DIR/stdlib
/// when they exist (the layout `cellsci scripts export DIR` writes). A DIR that is not a folder is a
/// usage error; one that shadows no bundled file gets a warning (its files would change nothing).
pub fn scripts_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !dir.is_dir() {
        anyhow::bail!("--scripts {}: no such folder", dir.display());
    }
    let mut dirs = vec![dir.clone()];
    for sub in ["scripts", "stdlib"] {
        if dir.join(sub).is_dir() {
            dirs.push(dir.join(sub));
        }
    }
    // what a bundled file is found as under these folders: stdlib/x.lua as x.lua (or stdlib/x.lua),
    // scripts/x.lua likewise, prompts/x.yaml as prompts/x.yaml
    let shadows = crate::lua::embedded::files().iter().any(|(rel, _)| {
        let short = rel.split_once('/').map(|(top, rest)| if top == "prompts" { *rel } else { rest }).unwrap_or(rel);
        dirs.iter().any(|d| d.join(short).is_file()) || dir.join(rel).is_file()
    });
    if !shadows {
        crate::ui::eline(&format!(
            "warning: --scripts {}: nothing in it has the name of a bundled file (success.lua, retry.lua, \
             pipeline.lua, prompts/generation.yaml, ... or the stdlib/, scripts/, prompts/ folders that \
             `cellsci scripts export` writes), so it changes nothing the pipeline uses (`cellsci scripts list` \
             shows the names)",
            dir.display()
        ));
    }
    Ok(dirs)
}

fn host_ctx(cli: &Cli, config: Option<Arc<crate::config::Config>>, script_dir: Option<&Path>) -> Result<HostCtx> {
    let mut ctx = HostCtx::new(config);
    if let Some(d) = &cli.scripts {
        ctx.user_dirs.extend(scripts_dirs(d)?);
    }
    if let Some(d) = script_dir {
        ctx.user_dirs.push(d.to_path_buf());
    }
    ctx.verbosity = if cli.quiet { -1 } else { cli.verbose.min(3) as i8 };
    ctx.progress = !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    crate::ui::enable_progress(ctx.progress);
    ctx.record = cli.record.clone();
    ctx.replay = cli.replay.clone();
    Ok(ctx)
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match &cli.command {
        Command::Run(r) => {
            let opts = json!({
                "use_idea": r.generate.use_idea,
                "prompt_file": r.generate.prompt_file.as_ref().map(|p| abs(p)),
                "resume": r.resume.as_ref().map(|p| abs(p)),
                "fail_if_unmet": r.fail_if_unmet.then_some(true),
                "strategy": r.strategy.as_ref().map(|s| if s.ends_with(".lua") { abs(Path::new(s)) } else { s.clone() }),
            });
            pipeline(&cli, "run", opts).await
        }
        Command::Generate(g) => {
            let opts = json!({
                "use_idea": g.use_idea,
                "prompt_file": g.prompt_file.as_ref().map(|p| abs(p)),
            });
            pipeline(&cli, "generate", opts).await
        }
        Command::Execute(t) | Command::Analyze(t) => {
            let name = if matches!(cli.command, Command::Execute(_)) { "execute" } else { "analyze" };
            pipeline(&cli, name, json!({ "trial": t.trial.as_ref().map(|p| abs(p)) })).await
        }
        Command::Script { file, args } => {
            let config = load_config(&cli, false)?;
            let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            let dir = file.parent().map(Path::to_path_buf);
            let rt = Runtime::new(host_ctx(&cli, config, dir.as_deref())?)?;
            let ret = rt.run_file(&file, args).await?;
            Ok(lua::exit_code_of(&ret))
        }
        Command::Scripts(ScriptsCommand::Export { dir, force }) => {
            export_scripts(dir, *force)?;
            Ok(EXIT_OK)
        }
        Command::Scripts(ScriptsCommand::List) => {
            for (p, _) in crate::lua::embedded::files() {
                println!("{p}");
            }
            Ok(EXIT_OK)
        }
        Command::Notebook(NotebookCommand::Run(args)) => crate::notebook_run::run(args, cli.quiet).await,
        Command::View { summary } => view(&cli, summary),
        Command::Demo(d) => demo(&cli, d).await,
        Command::Init { dir } => {
            let written = crate::start::write_init(dir)?;
            for p in &written {
                println!("wrote {}", crate::files::display_path(p));
            }
            println!(
                "next: set OPENAI_API_KEY, put phase 1's output where paths.stage1_analysis_dir says, and run: \
                 cellsci -c {} run --use-idea",
                crate::files::display_path(&dir.join(crate::start::CONFIG))
            );
            Ok(EXIT_OK)
        }
        Command::KernelReaper { .. } | Command::NotebookSaver { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

async fn pipeline(cli: &Cli, command: &str, opts: serde_json::Value) -> Result<u8> {
    let config = load_config(cli, true)?;
    let rt = Runtime::new(host_ctx(cli, config, None)?)?;
    let ret = rt.run_pipeline(command, opts).await?;
    Ok(lua::exit_code_of(&ret))
}

/// `cellsci demo`: write the demo, run it as `run --use-idea` with its own config, say where it all is.
async fn demo(cli: &Cli, d: &DemoArgs) -> Result<u8> {
    if cli.config.is_some() {
        anyhow::bail!("demo: --config is not for demo, which writes and uses a config of its own");
    }
    let cfg_path = crate::start::write_demo(&d.dir, d.python.as_deref())?;
    println!(
        "demo: wrote the demo (config, stage-1 data, recorded LLM replies) to {}",
        crate::files::display_path(&d.dir)
    );
    if d.no_run {
        println!("demo: run it with: cellsci -c {} run --use-idea", crate::files::display_path(&cfg_path));
        return Ok(EXIT_OK);
    }
    let config = Arc::new(crate::config::load(&cfg_path)?);
    let save_root = config.save_root();
    let rt = Runtime::new(host_ctx(cli, Some(config), None)?)?;
    let ret = rt.run_pipeline("run", json!({ "use_idea": true })).await?;
    let code = lua::exit_code_of(&ret);
    if code != EXIT_INTERRUPTED {
        crate::start::tell_demo(&d.dir, &save_root);
    }
    Ok(code)
}

/// `cellsci view`: rebuild the page; a file that is not a loop summary is a usage error (exit 2).
fn view(cli: &Cli, summary: &Path) -> Result<u8> {
    use crate::report::page::{self, Options, PageError};
    let ctx = host_ctx(cli, None, None)?;
    let doc = match page::read_summary(summary) {
        Ok(d) => d,
        Err(e @ PageError::NotSummary(_)) => {
            crate::ui::eline(&format!("error: {e}"));
            return Ok(crate::exit::EXIT_ERROR);
        }
        Err(e) => return Err(e.into()),
    };
    // Live only while the loop that writes it still runs (its pid ends the summary's name).
    let running = doc.get("finished_at").is_some_and(serde_json::Value::is_null) && writer_alive(summary);
    let opts = Options { live: Some(running), refresh_secs: 5, ..Default::default() };
    let out = page::build(summary, &crate::lua::report::page_template(&ctx), &opts)?;
    println!("{}", out.display());
    Ok(EXIT_OK)
}

/// Whether the process named by a summary's file name (`..._<pid>.json`) is alive.
fn writer_alive(summary: &Path) -> bool {
    let pid = summary.file_stem().and_then(|s| s.to_str()).and_then(|s| s.rsplit('_').next()?.parse::<i32>().ok());
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid.is_some_and(|p| p > 0 && p != std::process::id() as i32 && unsafe { libc::kill(p, 0) } == 0)
}

/// The editor settings `scripts export` writes beside the files: LuaLS and EmmyLua find the type stubs
/// (`stdlib/meta`) through it. The repository's own copy, for editing the bundled Lua here.
const LUARC: &str = include_str!("../.luarc.json");

/// Write the embedded scripts, stdlib and prompts (and a `.luarc.json` for editors) into `dir`, keeping
/// existing files unless `force`.
pub fn export_scripts(dir: &Path, force: bool) -> Result<()> {
    let mut written = 0;
    let mut kept = Vec::new();
    let files =
        crate::lua::embedded::files().iter().map(|(rel, _)| (*rel, crate::lua::embedded::get(rel).unwrap_or_default()));
    for (rel, text) in files.chain([(".luarc.json", std::borrow::Cow::Borrowed(LUARC))]) {
        let dest = dir.join(rel);
        if dest.exists() && !force {
            kept.push(rel.to_string());
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&dest, text.as_bytes()).with_context(|| format!("cannot write {}", dest.display()))?;
        written += 1;
    }
    println!("wrote {written} files to {}", dir.display());
    if !kept.is_empty() {
        println!("kept {} existing files (use --force to overwrite): {}", kept.len(), kept.join(", "));
    }
    Ok(())
}
