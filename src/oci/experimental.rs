//! The registry of experimental features a configuration or annotation may turn on.

use serde::Serialize;

/// An experimental feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Feature {
    /// The name used in `experimental` lists.
    pub name: &'static str,
    /// What the feature does.
    pub description: &'static str,
}

/// Every registered experimental feature.
pub const FEATURES: &[Feature] = &[Feature {
    name: "vm_backend",
    description: "the VM sandbox backend (sandbox_backend = \"vm\"), under development",
}];

/// The registered feature called `name`.
pub fn feature(name: &str) -> Option<Feature> {
    FEATURES.iter().copied().find(|f| f.name == name)
}

/// Looks up every name; the first unregistered name is the error.
pub fn features<'a, I>(names: I) -> Result<Vec<Feature>, String>
where
    I: IntoIterator<Item = &'a str>,
{
    names
        .into_iter()
        .map(|name| feature(name).ok_or_else(|| name.to_owned()))
        .collect()
}

/// The registered names, comma separated (for error messages).
pub fn accepted() -> String {
    let names: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        assert!(feature("vm_backend").is_some());
        assert_eq!(features(["vm_backend", "nope"]), Err("nope".to_owned()));
        assert_eq!(features(Vec::new()), Ok(Vec::new()));
        assert!(accepted().contains("vm_backend"));
    }
}
