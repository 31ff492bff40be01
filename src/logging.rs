//! Structured logging with slog, written as JSON lines to containerd's shim log.
//!
//! The shim daemon writes to the `log` fifo containerd opens in the bundle directory
//! (`start` and `delete` log nothing: containerd reads their output as their reply).
//! Records of the `log` crate (used by the containerd-shim crate) are forwarded to the same drain.

use std::{fs::OpenOptions, io::Write, os::unix::fs::OpenOptionsExt, sync::OnceLock};

use slog::{o, Drain, Level, Logger};

/// The process-wide logger; stays installed for the life of the process.
static GUARD: OnceLock<slog_scope::GlobalLoggerGuard> = OnceLock::new();

/// Installs the global logger for this process and returns it.
///
/// Writes to the `log` fifo in the current directory (the bundle), or stderr without one;
/// `debug` lowers the level from info to debug.
pub fn init(debug: bool, fields: (&str, &str)) -> Logger {
    let sink: Box<dyn Write + Send> =
        open_fifo("log").unwrap_or_else(|| Box::new(std::io::stderr()));
    let level = if debug { Level::Debug } else { Level::Info };
    // One buffered write per record, so containerd never interleaves a line with its own;
    // a mutex rather than a logging thread keeps the idle shim small.
    let json = slog_json::Json::new(std::io::BufWriter::with_capacity(16 * 1024, sink))
        .add_default_keys()
        .set_flush(true)
        .build();
    // A log line that cannot be written (containerd restarting) must not take the shim down.
    let drain = std::sync::Mutex::new(json.filter_level(level)).ignore_res();
    let logger = Logger::root(
        drain,
        o!("source" => "vessel", "namespace" => fields.0.to_string(), "id" => fields.1.to_string()),
    );
    if GUARD
        .set(slog_scope::set_global_logger(logger.clone()))
        .is_ok()
    {
        let log_level = if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        };
        let _ = slog_stdlog::init_with_level(log_level.to_level().unwrap_or(log::Level::Info));
        log::set_max_level(log_level);
    }
    logger
}

/// Opens the fifo at `path` for writing without blocking when containerd reads no log.
fn open_fifo(path: &str) -> Option<Box<dyn Write + Send>> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    // Writes must block rather than drop lines once the fifo is open.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    Some(Box::new(file))
}
