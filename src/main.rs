//! The `amibundle` binary: parse arguments, set up logging, run, map errors to exit codes.

use clap::Parser;

use amibundle::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    cli::output::init_logging(cli.verbose, cli.quiet);
    // `main` prints the error itself (instead of returning Result) to control the format — the
    // whole cause chain on one line — and the exit code.
    if let Err(err) = cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(cli::EXIT_FAILURE);
    }
}
