//! The `mule` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mule::cli::Cli::parse();
    match mule::commands::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mule: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
