//! Store credentials in etcdbrctl's conventions: `<P>AWS_APPLICATION_CREDENTIALS_JSON` (a JSON
//! file), else `<P>AWS_APPLICATION_CREDENTIALS` (a directory holding a `*.json` file, or one file
//! per field), with `<P>` one of "", "SOURCE_", "SECONDARY_". Same for Azure
//! (`AZURE_APPLICATION_CREDENTIALS`) and GCS (`GOOGLE_APPLICATION_CREDENTIALS`, a file). When
//! none is set, each SDK's standard environment variables apply.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The credential fields as strings, keyed by the JSON key (== per-field file name).
#[derive(Clone, Default)]
pub(crate) struct Fields {
    pub(crate) source: String,
    pub(crate) values: Map<String, Value>,
}

/// The source and the field names, never their values (keys and secrets).
impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields")
            .field("source", &self.source)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Fields {
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        match self.values.get(key)? {
            Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub(crate) fn require(&self, key: &str) -> Result<String> {
        self.get(key).ok_or_else(|| Error::Credentials {
            path: self.source.clone(),
            reason: format!("field {key:?} is missing or empty"),
        })
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key).as_deref(),
            Some("true") | Some("True") | Some("1")
        )
    }
}

/// Where credentials of a kind come from (for `--store-*` re-reads on rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One JSON file with every field (`*_JSON` variables).
    JsonFile(PathBuf),
    /// A directory with one file per field.
    Dir(PathBuf),
}

/// The source configured for `<env_prefix><base>` ("AWS_APPLICATION_CREDENTIALS", ...), if any.
pub(crate) fn source(env_prefix: &str, base: &str) -> Option<Source> {
    let json = std::env::var(format!("{env_prefix}{base}_JSON"))
        .ok()
        .filter(|s| !s.is_empty());
    if let Some(p) = json {
        return Some(Source::JsonFile(PathBuf::from(p)));
    }
    std::env::var(format!("{env_prefix}{base}"))
        .ok()
        .filter(|s| !s.is_empty())
        .map(|p| Source::Dir(PathBuf::from(p)))
}

/// Reads credential fields from a source; `keys` lists the per-field file names to look for.
pub(crate) fn read(source: &Source, keys: &[&str]) -> Result<Fields> {
    match source {
        Source::JsonFile(p) => read_json(p),
        Source::Dir(dir) => {
            let entries = fs::read_dir(dir).map_err(|e| Error::Credentials {
                path: dir.display().to_string(),
                reason: format!("cannot read the credentials directory: {e}"),
            })?;
            let mut json_files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            json_files.sort();
            if let Some(p) = json_files.first() {
                return read_json(p);
            }
            let mut values = Map::new();
            for k in keys {
                let p = dir.join(k);
                match fs::read_to_string(&p) {
                    Ok(v) => {
                        values.insert((*k).to_string(), Value::String(v.trim().to_string()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::Credentials {
                            path: p.display().to_string(),
                            reason: format!("cannot read: {e}"),
                        })
                    }
                }
            }
            Ok(Fields {
                source: dir.display().to_string(),
                values,
            })
        }
    }
}

fn read_json(p: &Path) -> Result<Fields> {
    let text = fs::read_to_string(p).map_err(|e| Error::Credentials {
        path: p.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Credentials {
        path: p.display().to_string(),
        reason: format!("not valid JSON: {e}"),
    })?;
    match v {
        Value::Object(values) => Ok(Fields {
            source: p.display().to_string(),
            values,
        }),
        _ => Err(Error::Credentials {
            path: p.display().to_string(),
            reason: "expected a JSON object".into(),
        }),
    }
}

/// Newest modification time of the credential files (a change means: rebuild the store).
pub(crate) fn modified(source: &Source) -> Option<SystemTime> {
    let newest = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match source {
        Source::JsonFile(p) => newest(p),
        Source::Dir(d) => fs::read_dir(d)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| newest(&e.path()))
            .chain(newest(d))
            .max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_file_and_per_field_dir() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("c.json");
        fs::write(&j, r#"{"region":"eu-1","accessKeyID":"AK","secretAccessKey":"SK","s3ForcePathStyle":true}"#).unwrap();
        let f = read(&Source::JsonFile(j.clone()), &[]).unwrap();
        assert_eq!(f.get("region").as_deref(), Some("eu-1"));
        assert!(f.flag("s3ForcePathStyle"));
        let shown = format!("{f:?}");
        assert!(
            shown.contains("secretAccessKey") && !shown.contains("\"SK\""),
            "{shown}"
        );

        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("region"), "us-2\n").unwrap();
        fs::write(dir.join("accessKeyID"), "A").unwrap();
        let f = read(
            &Source::Dir(dir.clone()),
            &["region", "accessKeyID", "secretAccessKey"],
        )
        .unwrap();
        assert_eq!(f.get("region").as_deref(), Some("us-2"));
        assert!(f.require("secretAccessKey").is_err());
        assert!(modified(&Source::Dir(dir.clone())).is_some());

        // a json file inside the dir wins
        fs::copy(&j, dir.join("creds.json")).unwrap();
        let f = read(&Source::Dir(dir), &["region"]).unwrap();
        assert_eq!(f.get("region").as_deref(), Some("eu-1"));

        assert!(read(&Source::JsonFile(d.path().join("missing.json")), &[]).is_err());
        fs::write(d.path().join("bad.json"), "{not json").unwrap();
        assert!(read(&Source::JsonFile(d.path().join("bad.json")), &[]).is_err());
    }
}
