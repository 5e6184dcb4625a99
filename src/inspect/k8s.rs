//! Kubernetes objects as kube-apiserver stores them in etcd: `/registry/...` keys and values that
//! are JSON or protobuf in the `k8s\0` envelope (`runtime.Unknown`).

/// The `k8s\0` prefix of protobuf-encoded objects.
pub(crate) const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// A `/registry/` key split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryKey {
    /// `group/resource` for resources of a named group whose group is in the key (CRDs,
    /// apiservices...), else the resource (`pods`, `deployments`).
    pub(crate) resource: String,
    /// Empty for cluster-scoped objects.
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// Splits `/registry/[group/]resource/[namespace/]name`. A first segment with a dot is a group;
/// after the resource, two segments mean namespace and name, one means a cluster-scoped name.
pub(crate) fn parse_registry_key(key: &[u8]) -> Option<RegistryKey> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix("/registry/")?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut resource = parts.remove(0).to_string();
    if resource.contains('.') && parts.len() >= 2 {
        resource = format!("{resource}/{}", parts.remove(0));
    }
    match parts.as_slice() {
        [name] => Some(RegistryKey {
            resource,
            namespace: String::new(),
            name: name.to_string(),
        }),
        [ns, name] => Some(RegistryKey {
            resource,
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        // deeper keys (e.g. events of old versions, leases of some controllers): keep the rest
        [ns, more @ ..] => Some(RegistryKey {
            resource,
            namespace: ns.to_string(),
            name: more.join("/"),
        }),
        [] => None,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
    #[prost(string, tag = "3")]
    content_encoding: String,
    #[prost(string, tag = "4")]
    content_type: String,
}

/// How a stored value is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `k8s\0` + runtime.Unknown; `raw` is the object's protobuf message.
    Protobuf {
        api_version: String,
        kind: String,
        raw: Vec<u8>,
    },
    /// A JSON object, with its apiVersion and kind when present.
    Json {
        api_version: String,
        kind: String,
    },
    Other,
}

pub(crate) fn decode_value(v: &[u8]) -> Encoding {
    if let Some(body) = v.strip_prefix(PROTOBUF_MAGIC) {
        if let Ok(u) = <Unknown as prost::Message>::decode(body) {
            let tm = u.type_meta.unwrap_or_default();
            return Encoding::Protobuf {
                api_version: tm.api_version,
                kind: tm.kind,
                raw: u.raw,
            };
        }
        return Encoding::Other;
    }
    if v.first() == Some(&b'{') {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(v) {
            let s = |k: &str| m.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            return Encoding::Json {
                api_version: s("apiVersion"),
                kind: s("kind"),
            };
        }
    }
    Encoding::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keys() {
        let k = parse_registry_key(b"/registry/pods/kube-system/etcd-0").expect("pod");
        assert_eq!(
            (k.resource.as_str(), k.namespace.as_str(), k.name.as_str()),
            ("pods", "kube-system", "etcd-0")
        );
        let k = parse_registry_key(b"/registry/namespaces/default").expect("ns");
        assert_eq!(
            (k.resource.as_str(), k.namespace.as_str()),
            ("namespaces", "")
        );
        let k = parse_registry_key(b"/registry/apiregistration.k8s.io/apiservices/v1.apps")
            .expect("apiservice");
        assert_eq!(
            (k.resource.as_str(), k.name.as_str()),
            ("apiregistration.k8s.io/apiservices", "v1.apps")
        );
        assert_eq!(parse_registry_key(b"/other/x"), None);
        assert_eq!(parse_registry_key(b"/registry/pods"), None);
    }

    #[test]
    fn protobuf_envelope() {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: "v1".into(),
                kind: "Pod".into(),
            }),
            raw: vec![1, 2, 3],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut v = PROTOBUF_MAGIC.to_vec();
        v.extend(prost::Message::encode_to_vec(&u));
        assert_eq!(
            decode_value(&v),
            Encoding::Protobuf {
                api_version: "v1".into(),
                kind: "Pod".into(),
                raw: vec![1, 2, 3]
            }
        );
        assert_eq!(
            decode_value(br#"{"apiVersion":"v1","kind":"ConfigMap"}"#),
            Encoding::Json {
                api_version: "v1".into(),
                kind: "ConfigMap".into()
            }
        );
        assert_eq!(decode_value(b"k8s\0\xff\xff"), Encoding::Other);
    }
}
