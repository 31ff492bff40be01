//! `containerd-shim-vessel-v2`: the shim binary containerd starts for `io.containerd.vessel.v2`.
//!
//! `convert`, `check` and `factory` are our own subcommands (and `jail`, which starts a VM's QEMU confined:
//! `vessel::sandbox::vm::jail`); everything else (`start`, `delete`, the daemon) is
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

/// Arguments of `containerd-shim-vessel-v2 check`.
#[derive(Parser)]
#[command(
    name = "containerd-shim-vessel-v2 check",
    about = "Tell what this host can do for vessel's backends (KVM, QEMU, guest image, runc, ...)"
)]
struct CheckArgs {
    /// Configuration file (default: the usual lookup order).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Prints every finding; fails when the configured backend cannot run.
fn check(args: CheckArgs) -> ExitCode {
    let config = match vessel::config::Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = vessel::check::check(&config);
    let mut out = std::io::stdout();
    for finding in &findings {
        let _ = writeln!(out, "{finding}");
    }
    if findings
        .iter()
        .any(|f| f.verdict == vessel::check::Verdict::Fail)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Arguments of `containerd-shim-vessel-v2 factory`.
#[derive(Parser)]
#[command(
    name = "containerd-shim-vessel-v2 factory",
    about = "Manage the VM templates pods start from ([factory] enable_template)"
)]
struct FactoryArgs {
    /// What to do.
    #[command(subcommand)]
    action: FactoryAction,
    /// Configuration file (default: VESSEL_CONFIG, else the usual lookup order).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log at debug level (to stderr): QEMU's command line, the guest's console.
    #[arg(long, global = true)]
    debug: bool,
}

#[derive(clap::Subcommand, Clone, Copy)]
enum FactoryAction {
    /// Make the template pods of this configuration start from, unless it exists.
    Init,
    /// List the templates: shape, size, age, clones running.
    Status,
    /// Remove every template (running clones keep their memory).
    Destroy,
}

fn factory(args: FactoryArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(vessel::factory::run(
                args.action.into(),
                args.config.as_deref(),
                args.debug,
            ))
        });
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

impl From<FactoryAction> for vessel::factory::Action {
    fn from(action: FactoryAction) -> Self {
        match action {
            FactoryAction::Init => Self::Init,
            FactoryAction::Status => Self::Status,
            FactoryAction::Destroy => Self::Destroy,
        }
    }
}

fn main() -> ExitCode {
    // Before anything else: the helper that confines a VM's QEMU and execs it.
    if let Some(args) = vessel::sandbox::vm::jail::action_args(std::env::args_os()) {
        return vessel::sandbox::vm::jail::main(args);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "check") {
        return check(CheckArgs::parse_from(std::env::args_os().skip(1)));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "factory") {
        return factory(FactoryArgs::parse_from(std::env::args_os().skip(1)));
    }
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
