//! Environment variables: `NAME=value` strings to name/value pairs.

use serde::Serialize;

use super::Error;

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    /// The name.
    pub var: String,
    /// The value.
    pub value: String,
}

/// Parses `NAME=value` strings (virtcontainers' `EnvVars`): the value is everything after the
/// first `=` (so `A=b=c` gives `b=c`) with `'` and spaces trimmed from both ends; a string
/// without `=` or with an empty name is an error.
pub fn env_vars(envs: &[String]) -> Result<Vec<EnvVar>, Error> {
    envs.iter()
        .enumerate()
        .map(|(i, env)| {
            let field = || format!("env[{i}]");
            let (var, value) = env.split_once('=').ok_or_else(|| Error::InvalidField {
                field: field(),
                reason: format!("{env:?} has no '=' (accepted: NAME=value)"),
            })?;
            if var.is_empty() {
                return Err(Error::InvalidField {
                    field: field(),
                    reason: format!("{env:?} has an empty name (accepted: NAME=value)"),
                });
            }
            Ok(EnvVar {
                var: var.to_owned(),
                value: value.trim_matches(|c| c == '\'' || c == ' ').to_owned(),
            })
        })
        .collect()
}

/// The environment of an OCI process: entries without `=` are skipped (as runtimes do), the
/// value is everything after the first `=`, untrimmed; an empty name is an error.
pub(crate) fn process_envs(envs: &[String]) -> Result<Vec<EnvVar>, Error> {
    let mut out = Vec::with_capacity(envs.len());
    for (i, env) in envs.iter().enumerate() {
        let Some((var, value)) = env.split_once('=') else {
            continue;
        };
        if var.is_empty() {
            return Err(Error::InvalidField {
                field: format!("process.env[{i}]"),
                reason: format!("{env:?} has an empty name (accepted: NAME=value)"),
            });
        }
        out.push(EnvVar {
            var: var.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn pairs(vars: &[EnvVar]) -> Vec<(&str, &str)> {
        vars.iter()
            .map(|e| (e.var.as_str(), e.value.as_str()))
            .collect()
    }

    #[test]
    fn env_vars_keeps_everything_after_first_equals_and_trims() {
        let vars = env_vars(&strings(&["A=b=c", "B= 'quoted' ", "C="])).unwrap_or_default();
        assert_eq!(pairs(&vars), [("A", "b=c"), ("B", "quoted"), ("C", "")]);
    }

    #[test]
    fn env_vars_errors() {
        let no_eq = env_vars(&strings(&["A=1", "JUSTNAME"]))
            .err()
            .map(|e| e.to_string());
        assert!(no_eq.unwrap_or_default().contains("env[1]"));
        let empty = env_vars(&strings(&["=x"])).err().map(|e| e.to_string());
        assert!(empty.unwrap_or_default().contains("empty name"));
        assert_eq!(env_vars(&[]).ok(), Some(Vec::new()));
    }

    #[test]
    fn process_envs_fixes_the_seed_split() {
        let vars = process_envs(&strings(&["PATH=/bin", "A=b=c", "SKIPPED", "Q=' x '"]));
        let vars = vars.unwrap_or_default();
        assert_eq!(
            pairs(&vars),
            [("PATH", "/bin"), ("A", "b=c"), ("Q", "' x '")]
        );
        let err = process_envs(&strings(&["=v"])).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("process.env[0]"));
    }
}
