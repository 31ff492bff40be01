//! Reading an OCI spec: a parse error names the field (and, for a device, the device).

use oci_spec::runtime::{Mount, Spec};

use super::Error;

/// Whether `mount` binds a path (its source is a path, not the name of a file system).
pub fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Parses `config.json`; an invalid field is an [`Error::InvalidField`] naming its JSON path.
///
/// One parser for valid and broken specs alike: a second instantiation of the whole Spec
/// parser would be code every idle shim maps.
pub fn parse_spec(text: &[u8]) -> Result<Spec, Error> {
    let mut json = serde_json::Deserializer::from_slice(text);
    let spec = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_json appends the position, which names nothing a user wrote by hand.
        let message = match message.rsplit_once(" at line ") {
            Some((message, _)) => message.to_string(),
            None => message,
        };
        let reason = match device_path(text, &field) {
            Some(device) => format!("device {device}: {message}"),
            None => message,
        };
        Error::InvalidField { field, reason }
    })?;
    // Whatever follows the document is an error too, as `serde_json::from_slice` has it.
    json.end().map_err(|e| Error::InvalidField {
        field: ".".into(),
        reason: format!("after the spec: {e}"),
    })?;
    Ok(spec)
}

/// The `path` of the device a field path such as `linux.devices[2].type` points into.
fn device_path(text: &[u8], field: &str) -> Option<String> {
    let index: usize = field
        .strip_prefix("linux.devices[")?
        .split_once(']')?
        .0
        .parse()
        .ok()?;
    let spec: serde_json::Value = serde_json::from_slice(text).ok()?;
    spec["linux"]["devices"][index]["path"]
        .as_str()
        .map(|path| format!("{path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_after_the_spec_is_an_error() {
        let error = parse_spec(br#"{"ociVersion": "1.0.2"} trailing"#).unwrap_err();
        assert!(error.to_string().contains("after the spec"), "{error}");
        assert!(parse_spec(b"{\"ociVersion\": \"1.0.2\"}\n").is_ok());
    }

    #[test]
    fn a_bad_device_type_names_the_device_and_the_field() {
        let spec = br#"{"ociVersion": "1.0.2", "linux": {"devices": [
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
            {"path": "/dev/fuse", "type": "x", "major": 10, "minor": 229}]}}"#;
        let error = parse_spec(spec).unwrap_err().to_string();
        assert!(
            error.starts_with("config.json: linux.devices[1].type: device \"/dev/fuse\": "),
            "{error}"
        );
        assert!(error.contains("`x`") && error.contains("`c`"), "{error}");
        assert!(!error.contains("at line"), "{error}");
    }

    #[test]
    fn any_bad_field_is_named() {
        let error = parse_spec(br#"{"ociVersion": "1.0.2", "process": {"cwd": 7}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config.json: process.cwd: "), "{error}");
        assert!(parse_spec(b"{not json").is_err());
    }

    #[test]
    fn a_valid_spec_parses() {
        let spec = serde_json::to_vec(&Spec::default()).unwrap();
        assert_eq!(parse_spec(&spec).unwrap(), Spec::default());
    }
}
