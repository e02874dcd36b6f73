//! Thin entry point: parse, run, print the error chain, exit with a meaningful code.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cellsci::cli::Cli::parse();
    let code = cellsci::cli::main(cli);
    std::process::ExitCode::from(code)
}
