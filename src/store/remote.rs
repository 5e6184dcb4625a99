//! Builders of the remote object stores from `StoreConfig` and etcdbrctl-style credentials.

use super::credentials::{self, Fields, Source};
use super::StoreConfig;
use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, ObjectStore};
use std::sync::Arc;

const S3_KEYS: &[&str] = &[
    "region",
    "accessKeyID",
    "secretAccessKey",
    "roleARN",
    "token",
    "endpoint",
    "s3ForcePathStyle",
    "insecureSkipVerify",
    "trustedCaCert",
    "sseCustomerKey",
    "sseCustomerAlgorithm",
];
const ABS_KEYS: &[&str] = &["storageAccount", "storageKey", "domain", "emulatorEnabled"];

fn client_options(fields: Option<&Fields>, allow_http: bool) -> Result<ClientOptions> {
    let mut o = ClientOptions::new().with_allow_http(allow_http);
    if let Some(f) = fields {
        if f.flag("insecureSkipVerify") {
            o = o.with_allow_invalid_certificates(true);
        }
        if let Some(pem) = f.get("trustedCaCert") {
            let cert = object_store::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                Error::Credentials {
                    path: f.source.clone(),
                    reason: format!("trustedCaCert is not a PEM certificate: {e}"),
                }
            })?;
            o = o.with_root_certificate(cert);
        }
    }
    Ok(o)
}

fn store_err(cfg: &StoreConfig, e: object_store::Error) -> Error {
    Error::store(
        format!("{}:{}", cfg.provider.as_str(), cfg.container),
        "configure the store client",
        e,
    )
}

pub(super) fn build_s3(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let src = cfg.credential_source("AWS_APPLICATION_CREDENTIALS");
    let fields = src
        .as_ref()
        .map(|s| credentials::read(s, S3_KEYS))
        .transpose()?;
    // Without etcdbrctl credential files, the standard AWS_* variables apply.
    let mut b = if fields.is_some() {
        AmazonS3Builder::new()
    } else {
        AmazonS3Builder::from_env()
    };
    b = b.with_bucket_name(&cfg.container);
    let mut endpoint = cfg.endpoint_override.clone();
    if let Some(f) = &fields {
        b = b.with_region(f.require("region")?);
        match (
            f.get("accessKeyID"),
            f.get("secretAccessKey"),
            f.get("roleARN"),
            f.get("token"),
        ) {
            (Some(id), Some(secret), _, _) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret)
            }
            (_, _, Some(role), Some(token_file)) => {
                b = b
                    .with_config(AmazonS3ConfigKey::RoleArn, role)
                    .with_config(AmazonS3ConfigKey::WebIdentityTokenFile, token_file);
            }
            _ => {
                return Err(Error::Credentials {
                    path: f.source.clone(),
                    reason: "need accessKeyID and secretAccessKey, or roleARN and token".into(),
                })
            }
        }
        if endpoint.is_empty() {
            endpoint = f.get("endpoint").unwrap_or_default();
        }
        if f.flag("s3ForcePathStyle") {
            b = b.with_virtual_hosted_style_request(false);
        }
        if let Some(key) = f.get("sseCustomerKey") {
            let alg = f
                .get("sseCustomerAlgorithm")
                .unwrap_or_else(|| "AES256".into());
            if alg != "AES256" {
                return Err(Error::Credentials {
                    path: f.source.clone(),
                    reason: format!("sseCustomerAlgorithm {alg:?} is not supported (only AES256)"),
                });
            }
            // object_store's SSE-C option takes the key base64-encoded
            b = b.with_ssec_encryption(B64.encode(key.as_bytes()));
        }
    } else if std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        b = b.with_region("us-east-1");
    }
    if !endpoint.is_empty() {
        // S3-compatible servers (MinIO, Ceph, moto...) are addressed path-style.
        b = b
            .with_endpoint(&endpoint)
            .with_virtual_hosted_style_request(false);
    }
    b = b.with_client_options(client_options(
        fields.as_ref(),
        endpoint.starts_with("http://"),
    )?);
    Ok(Arc::new(b.build().map_err(|e| store_err(cfg, e))?))
}

pub(super) fn build_abs(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let src = cfg.credential_source("AZURE_APPLICATION_CREDENTIALS");
    let fields = src
        .as_ref()
        .map(|s| credentials::read(s, ABS_KEYS))
        .transpose()?;
    let mut b = if fields.is_some() {
        MicrosoftAzureBuilder::new()
    } else {
        MicrosoftAzureBuilder::from_env()
    };
    b = b.with_container_name(&cfg.container);
    if let Some(f) = &fields {
        let acct = f.require("storageAccount")?;
        b = b
            .with_account(&acct)
            .with_access_key(f.require("storageKey")?);
        if cfg.endpoint_override.is_empty() {
            if let Some(domain) = f.get("domain") {
                b = b.with_endpoint(format!("https://{acct}.{domain}"));
            }
        }
    }
    if !cfg.endpoint_override.is_empty() {
        // etcdbrctl: the container URL is `<override>/<container>`, i.e. the override is the
        // account URL (Azurite: `http://127.0.0.1:10000/devstoreaccount1`).
        b = b.with_endpoint(cfg.endpoint_override.trim_end_matches('/').to_string());
    }
    b = b.with_client_options(client_options(
        None,
        cfg.endpoint_override.starts_with("http://"),
    )?);
    Ok(Arc::new(b.build().map_err(|e| store_err(cfg, e))?))
}

pub(super) fn build_gcs(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&cfg.container);
    match credential_source(cfg) {
        Some(Source::JsonFile(p)) if p.is_file() => {
            b = b.with_service_account_path(p.display().to_string());
        }
        Some(Source::JsonFile(p) | Source::Dir(p)) => {
            return Err(Error::Credentials {
                path: p.display().to_string(),
                reason: format!(
                    "{}GOOGLE_APPLICATION_CREDENTIALS does not name a file",
                    cfg.env_prefix
                ),
            });
        }
        None => {}
    }
    if !cfg.endpoint_override.is_empty() {
        b = b.with_base_url(cfg.endpoint_override.trim_end_matches('/'));
        if cfg.endpoint_override.starts_with("http://") {
            // emulators take no authentication, as etcdbrctl's STORAGE_EMULATOR_HOST mode
            b = b
                .with_skip_signature(true)
                .with_client_options(client_options(None, true)?);
        }
    }
    Ok(Arc::new(b.build().map_err(|e| store_err(cfg, e))?))
}

/// The credential source to watch for rotation (see [`credentials::modified`]).
pub(crate) fn credential_source(cfg: &StoreConfig) -> Option<Source> {
    match cfg.provider {
        super::Provider::S3 => cfg.credential_source("AWS_APPLICATION_CREDENTIALS"),
        super::Provider::Abs => cfg.credential_source("AZURE_APPLICATION_CREDENTIALS"),
        super::Provider::Gcs => cfg.credentials.clone().or_else(|| {
            std::env::var(format!("{}GOOGLE_APPLICATION_CREDENTIALS", cfg.env_prefix))
                .ok()
                .map(|p| Source::JsonFile(p.into()))
        }),
        super::Provider::Local => None,
    }
}
