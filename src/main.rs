//! The `amibundle` binary: parse arguments, set up logging and signals, run, map errors to exit
//! codes.

use amibundle::cli;
use amibundle::interrupt;

fn main() {
    // Invoked as ec2-bundle-vol, ec2-upload-bundle ... (install-compat's symlinks): the classic
    // tool's command line, translated.
    let (cli, personality) = match cli::compat::parse_args() {
        Ok(parsed) => parsed,
        Err(code) => std::process::exit(code),
    };
    cli::output::init_logging(cli.verbose.saturating_add(cli.debug), cli.quiet);
    if let Err(err) = interrupt::install() {
        eprintln!(
            "warning: cannot handle SIGINT/SIGTERM ({err}); an interrupted run may leave temporary files"
        );
    }
    // `main` prints the error itself (instead of returning Result) to control the format — the
    // whole cause chain on one line — and the exit code.
    if let Err(err) = cli::run(cli) {
        if let Some(signal) = interrupt::signal() {
            eprintln!(
                "amibundle: interrupted; temporary files removed, nothing was left half-written"
            );
            std::process::exit(128 + signal);
        }
        let message = format!("{err:#}");
        eprintln!("error: {message}");
        // Under an ec2-* personality, a hint naming amibundle's own flags says where they are.
        if let Some(tool) = personality {
            if let Some(note) = cli::compat::error_note(tool, &message) {
                eprintln!("{}: note: {note}", tool.name());
            }
        }
        std::process::exit(cli::exit_code(&err));
    }
}
