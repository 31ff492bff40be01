//! `containerd-shim-vessel-v2`: the shim binary containerd starts for `io.containerd.vessel.v2`.
//!
//! `convert` is our own debugging subcommand; everything else (`start`, `delete`, the daemon) is
//! the shim v2 protocol, handled by the containerd-shim crate around [`vessel::shim::Vessel`].

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::Parser;

/// Arguments of `containerd-shim-vessel-v2 convert`.
#[derive(Parser)]
#[command(
    name = "containerd-shim-vessel-v2 convert",
    about = "Print the sandbox or container config vessel derives from an OCI bundle"
)]
struct ConvertArgs {
    /// Bundle directory holding config.json.
    #[arg(long)]
    bundle: PathBuf,
    /// Configuration file (default: the usual lookup order).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Container id (default: the bundle directory's name).
    #[arg(long)]
    id: Option<String>,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "convert") {
        let args = ConvertArgs::parse_from(std::env::args_os().skip(1));
        return match vessel::convert::convert(
            &args.bundle,
            args.config.as_deref(),
            args.id.as_deref(),
        ) {
            Ok(json) => {
                // A closed pipe (`convert ... | head`) is the reader's choice, not an error.
                let _ = writeln!(std::io::stdout(), "{json:#}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        };
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(vessel::shim::run()),
        Err(e) => {
            eprintln!("vessel: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
