//! PLACEHOLDER (lead's compile stub; the convert owner replaces this file entirely).
pub fn convert(_b: &std::path::Path, _c: Option<&std::path::Path>, _i: Option<&str>) -> Result<serde_json::Value, String> { Err("todo".into()) }
