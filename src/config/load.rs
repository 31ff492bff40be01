//! Finding and parsing the configuration file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Config, Error};

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "VESSEL_CONFIG";

/// Files looked for, in order, when neither an explicit path nor the environment names one.
pub const SYSTEM_PATHS: [&str; 2] = [
    "/etc/vessel/configuration.toml",
    "/usr/share/defaults/vessel/configuration.toml",
];

/// The file to load: the explicit path, else a non-empty `env`, else the first existing
/// system path; `None` means the built-in defaults.
pub(super) fn locate(
    explicit: Option<&Path>,
    env: Option<&OsStr>,
    system: &[&Path],
) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| system.iter().find(|p| p.exists()).map(|p| p.to_path_buf()))
}

/// Parses TOML text; a failure names the file, the line and the dotted key.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = e
            .span()
            .map(|s| locate_key(text, s.start))
            .unwrap_or_default();
        Error::Parse {
            path: path.to_path_buf(),
            line,
            key,
            message: e.message().replace('\n', " "),
        }
    })
}

/// The 1-based line holding byte `offset`, and the dotted key written there (`table.key`, or
/// the table name on a `[table]` line).
fn locate_key(text: &str, offset: usize) -> (usize, String) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let header = |l: &str| {
        let t = l.trim();
        t.starts_with('[')
            .then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
    };
    let current = text.lines().nth(line - 1).unwrap_or_default();
    if let Some(table) = header(current) {
        return (line, table);
    }
    let name = current.split('=').next().unwrap_or_default().trim();
    let table = before.lines().rev().find_map(header);
    let key = match table {
        Some(t) if !t.is_empty() => format!("{t}.{name}"),
        _ => name.to_owned(),
    };
    (line, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_order() {
        let dir = tempfile::tempdir().ok();
        let dir = dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"));
        let first = dir.join("a.toml");
        let second = dir.join("b.toml");
        let _ = std::fs::write(&second, "");
        let system = [first.as_path(), second.as_path()];
        let explicit = Path::new("/x.toml");
        let env = OsStr::new("/env.toml");
        assert_eq!(
            locate(Some(explicit), Some(env), &system),
            Some(explicit.into())
        );
        assert_eq!(locate(None, Some(env), &system), Some("/env.toml".into()));
        assert_eq!(
            locate(None, Some(OsStr::new("")), &system),
            Some(second.clone())
        );
        assert_eq!(locate(None, None, &system), Some(second));
        assert_eq!(locate(None, None, &[first.as_path()]), None);
    }

    #[test]
    fn locate_key_names_table_and_key() {
        let text =
            "[runtime]\nenable_debug = true\n\n[hypervisor.qemu]\n  default_memory = \"x\"\n";
        let offset = text.find("\"x\"").unwrap_or(0);
        assert_eq!(
            locate_key(text, offset),
            (5, "hypervisor.qemu.default_memory".into())
        );
        assert_eq!(locate_key(text, 1), (1, "runtime".into()));
        assert_eq!(locate_key("top = 1", 0), (1, "top".into()));
    }
}
