//! Our own instance-metadata reads over IMDSv2: the instance identity document (account,
//! region, architecture…) and the items ec2-bundle-vol inherits into the manifest (ancestor AMI
//! ids, kernel, ramdisk, product codes, block-device mapping), plus the pure rules that turn
//! them into manifest fields (docs/reference-behaviour.md §4).
//!
//! Reads go through aws-config's IMDS client, which is IMDSv2 only (a session token from
//! `PUT /latest/api/token` on every read), so instances with `HttpTokens=required` work, unlike
//! the classic tools' plain IMDSv1 GETs. Off EC2 the answer must come fast: short timeouts, no
//! retry of a silent endpoint, and the first read doubles as the probe, so "not on EC2" costs one
//! connect timeout, not one per item.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::{ImdsError as SdkImdsError, TokenError};
// The IMDS client's token errors are `SdkError<TokenError, HttpResponse>`; aws-config does not
// re-export those two smithy types, every SDK crate does.
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use futures::future::{try_join, try_join_all};
use serde::{Deserialize, Serialize};

use crate::bundle::manifest::Mapping;

/// EC2's metadata endpoint when neither an override nor `AWS_EC2_METADATA_SERVICE_ENDPOINT` is
/// given (the client also honours the profile's `ec2_metadata_service_endpoint[_mode]`).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Environment variable naming another endpoint (aws-config's own).
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// Environment variable that turns instance metadata off when `true` (aws-config's own; its
/// region and credential providers honour it, its bare client does not, so we do).
pub const DISABLED_ENV: &str = "AWS_EC2_METADATA_DISABLED";

/// TCP connect to the endpoint. On EC2 the link-local endpoint answers in well under a
/// millisecond; elsewhere 169.254.169.254 is usually a black hole, so this is what "not on EC2"
/// costs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Waiting for response bytes. A host that accepts the connection but never answers (a proxy,
/// a container with a hop limit of 1 swallowing the token response) fails after this.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// One attempt of one read, token included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// One read with its retries: the bound on any single item.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
/// Attempts per read. The client retries only 5xx and 401 (expired token), never a timeout or
/// a refused connection, so a second attempt costs nothing off EC2.
const MAX_ATTEMPTS: u32 = 2;

/// Where the identity document lives (account, region, architecture, instance id and type).
const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
/// Root of the metadata items.
const META_DATA: &str = "/latest/meta-data/";

/// How to reach instance metadata.
#[derive(Debug, Clone, Default)]
pub struct ImdsOptions {
    /// Endpoint such as `http://127.0.0.1:8080` or `http://[fd00:ec2::254]`; `None` lets the
    /// client choose (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, then EC2's).
    pub endpoint: Option<String>,
    /// Do not read metadata at all (`AWS_EC2_METADATA_DISABLED=true`).
    pub disabled: bool,
}

impl ImdsOptions {
    /// Options from the environment: `AWS_EC2_METADATA_SERVICE_ENDPOINT` and
    /// `AWS_EC2_METADATA_DISABLED` (`true`, any case, as aws-config reads it).
    pub fn from_env() -> Self {
        Self {
            endpoint: std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty()),
            disabled: std::env::var(DISABLED_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }
}

/// Why instance metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// Turned off by the environment.
    #[error("instance metadata is disabled ({DISABLED_ENV}=true)")]
    Disabled,
    /// The endpoint override is not a URI.
    #[error("instance metadata endpoint {endpoint:?} is not a valid URI")]
    BadEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Nothing answered: not on EC2, the metadata endpoint turned off for this instance, or a
    /// container beyond the token's hop limit.
    #[error(
        "instance metadata service at {endpoint} did not answer: not running on EC2, metadata turned off for this instance, or (in a container) a hop limit too low for the token (HttpPutResponseHopLimit)"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// The client's error (boxed: it is large).
        #[source]
        source: Box<SdkImdsError>,
    },
    /// Something answered the token request, but gave no token.
    #[error(
        "instance metadata service at {endpoint} refused an IMDSv2 session token{}: metadata is turned off for this instance, or this is not EC2's metadata service",
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
    )]
    TokenRefused {
        /// The endpoint tried.
        endpoint: String,
        /// HTTP status of the token response, when there was one.
        status: Option<u16>,
        /// The client's error (boxed: it is large).
        #[source]
        source: Box<SdkImdsError>,
    },
    /// A read was refused although a token was sent.
    #[error(
        "instance metadata service at {endpoint} refused {path} with HTTP {status}: the session token was not accepted"
    )]
    Unauthorized {
        /// The endpoint tried.
        endpoint: String,
        /// The item read.
        path: String,
        /// 401 or 403.
        status: u16,
    },
    /// Any other failure of one read after the service had answered.
    #[error("reading instance metadata {path} from {endpoint}")]
    Read {
        /// The endpoint tried.
        endpoint: String,
        /// The item read.
        path: String,
        /// The client's error (boxed: it is large).
        #[source]
        source: Box<SdkImdsError>,
    },
    /// The identity document is not the JSON EC2 serves.
    #[error("instance identity document from {endpoint} is not valid JSON")]
    BadIdentityDocument {
        /// The endpoint tried.
        endpoint: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The identity document has no usable account id.
    #[error(
        "instance identity document from {endpoint} has no 12-digit accountId (found {found:?})"
    )]
    NoAccountId {
        /// The endpoint tried.
        endpoint: String,
        /// What was there instead.
        found: Option<String>,
    },
    /// The small runtime for a blocking read could not be built.
    #[error("starting a runtime to read instance metadata")]
    Runtime(#[source] std::io::Error),
}

impl ImdsError {
    /// True when there is no instance metadata to be had here (disabled, nothing answering, no
    /// token service): the caller may warn and carry on without it (`bundle-vol` off EC2), or
    /// fail naming the flag that makes the read unnecessary.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Disabled | Self::Unreachable { .. } | Self::TokenRefused { .. }
        )
    }
}

/// The instance identity document (`/latest/dynamic/instance-identity/document`), the fields
/// we use. Unknown fields are ignored; absent or `null` ones are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IdentityDocument {
    /// 12-digit account id of the instance's owner.
    pub account_id: Option<String>,
    /// `i386`, `x86_64` or `arm64` (the manifest's vocabulary too).
    pub architecture: Option<String>,
    /// e.g. `eu-west-1a`.
    pub availability_zone: Option<String>,
    /// The AMI the instance was launched from.
    pub image_id: Option<String>,
    /// `i-…`.
    pub instance_id: Option<String>,
    /// e.g. `m3.medium`.
    pub instance_type: Option<String>,
    /// `aki-…` for paravirtual instances.
    pub kernel_id: Option<String>,
    /// `ari-…` for paravirtual instances.
    pub ramdisk_id: Option<String>,
    /// e.g. `eu-west-1`.
    pub region: Option<String>,
}

impl IdentityDocument {
    /// Parses the document EC2 serves (JSON).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let mut doc: Self = serde_json::from_str(text)?;
        for field in [
            &mut doc.account_id,
            &mut doc.architecture,
            &mut doc.availability_zone,
            &mut doc.image_id,
            &mut doc.instance_id,
            &mut doc.instance_type,
            &mut doc.kernel_id,
            &mut doc.ramdisk_id,
            &mut doc.region,
        ] {
            *field = field.take().and_then(non_empty);
        }
        Ok(doc)
    }
}

/// What this instance's metadata says, for the manifest and for defaults. Absent items are
/// `None` or empty: HVM instances have no kernel or ramdisk, most AMIs no ancestors or product
/// codes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceMetadata {
    /// Region (identity document, else `placement/region`).
    pub region: Option<String>,
    /// Availability zone (identity document, else `placement/availability-zone`).
    pub availability_zone: Option<String>,
    /// Owner account id (identity document).
    pub account_id: Option<String>,
    /// Instance id (identity document, else `instance-id`).
    pub instance_id: Option<String>,
    /// Instance type (identity document, else `instance-type`).
    pub instance_type: Option<String>,
    /// Architecture in the manifest's vocabulary (identity document).
    pub architecture: Option<String>,
    /// `ami-id`: the AMI this instance runs.
    pub ami_id: Option<String>,
    /// `ancestor-ami-ids`, oldest first.
    pub ancestor_ami_ids: Vec<String>,
    /// `kernel-id`.
    pub kernel_id: Option<String>,
    /// `ramdisk-id`.
    pub ramdisk_id: Option<String>,
    /// `product-codes`, one per line.
    pub product_codes: Vec<String>,
    /// `block-device-mapping/<virtual>` → device as EC2 gives it (`sda1`, `/dev/sda1`, `sdb`).
    pub block_device_mapping: BTreeMap<String, String>,
}

/// An IMDSv2 reader.
#[derive(Debug, Clone)]
pub struct Imds {
    client: Client,
    /// For messages: the endpoint in use, as far as we know it.
    endpoint: String,
}

impl Imds {
    /// A reader for `options`. No request is made yet.
    ///
    /// # Errors
    /// [`ImdsError::Disabled`] when metadata is turned off, [`ImdsError::BadEndpoint`] for an
    /// endpoint that is not a URI.
    pub fn new(options: &ImdsOptions) -> Result<Self, ImdsError> {
        if options.disabled {
            return Err(ImdsError::Disabled);
        }
        // Instance metadata is plain HTTP: a client without TLS, so that a system with no CA
        // certificates (a minimal install without ca-certificates) can still read it; the
        // SDK's default client panics there on the first request.
        let plain_http = aws_config::provider_config::ProviderConfig::default()
            .with_http_client(aws_smithy_http_client::Builder::new().build_http());
        let mut builder = Client::builder()
            .configure(&plain_http)
            .max_attempts(MAX_ATTEMPTS)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT);
        let endpoint = match &options.endpoint {
            Some(e) => {
                builder = builder
                    .endpoint(e)
                    .map_err(|source| ImdsError::BadEndpoint {
                        endpoint: e.clone(),
                        source,
                    })?;
                e.trim_end_matches('/').to_string()
            }
            None => DEFAULT_ENDPOINT.to_string(),
        };
        Ok(Self {
            client: builder.build(),
            endpoint,
        })
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The instance identity document; also the probe that tells "not on EC2" apart.
    ///
    /// # Errors
    /// [`ImdsError::is_unavailable`] errors when there is no metadata service; a missing
    /// document gives an empty one.
    pub async fn identity_document(&self) -> Result<IdentityDocument, ImdsError> {
        match self.get(IDENTITY_DOCUMENT_PATH, true).await? {
            None => Ok(IdentityDocument::default()),
            Some(text) => {
                IdentityDocument::parse(&text).map_err(|source| ImdsError::BadIdentityDocument {
                    endpoint: self.endpoint.clone(),
                    source,
                })
            }
        }
    }

    /// The owner account id from the identity document (12 digits).
    ///
    /// # Errors
    /// As [`Self::identity_document`], and [`ImdsError::NoAccountId`].
    pub async fn account_id(&self) -> Result<String, ImdsError> {
        let found = self.identity_document().await?.account_id;
        match found {
            Some(id) if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
            found => Err(ImdsError::NoAccountId {
                endpoint: self.endpoint.clone(),
                found,
            }),
        }
    }

    /// Everything [`InstanceMetadata`] holds. The identity document is read first (the probe);
    /// the other items then concurrently, on the same session token.
    ///
    /// # Errors
    /// [`ImdsError::is_unavailable`] errors when there is no metadata service; others when it
    /// answered but a read failed. Missing items are not errors.
    pub async fn instance_metadata(&self) -> Result<InstanceMetadata, ImdsError> {
        let doc = self.identity_document().await?;
        let item = |name: &'static str| async move {
            Ok::<_, ImdsError>(
                self.get(&format!("{META_DATA}{name}"), false)
                    .await?
                    .and_then(non_empty),
            )
        };
        // Only when the document lacks them (it never does on EC2): one extra read each.
        let or_item = |have: Option<String>, name: &'static str| async move {
            match have {
                Some(v) => Ok(Some(v)),
                None => item(name).await,
            }
        };
        let (
            (ami_id, ancestors, kernel_id, ramdisk_id, product_codes, mapping),
            (region, availability_zone, instance_id, instance_type),
        ) = try_join(
            async {
                futures::try_join!(
                    item("ami-id"),
                    item("ancestor-ami-ids"),
                    item("kernel-id"),
                    item("ramdisk-id"),
                    item("product-codes"),
                    self.block_device_mapping(),
                )
            },
            async {
                futures::try_join!(
                    or_item(doc.region.clone(), "placement/region"),
                    or_item(doc.availability_zone.clone(), "placement/availability-zone"),
                    or_item(doc.instance_id.clone(), "instance-id"),
                    or_item(doc.instance_type.clone(), "instance-type"),
                )
            },
        )
        .await?;
        Ok(InstanceMetadata {
            region,
            availability_zone,
            account_id: doc.account_id,
            instance_id,
            instance_type,
            architecture: doc.architecture,
            ami_id,
            ancestor_ami_ids: lines(ancestors.as_deref()),
            kernel_id,
            ramdisk_id,
            product_codes: lines(product_codes.as_deref()),
            block_device_mapping: mapping,
        })
    }

    /// `block-device-mapping/`: the listing, then each entry.
    async fn block_device_mapping(&self) -> Result<BTreeMap<String, String>, ImdsError> {
        let dir = format!("{META_DATA}block-device-mapping/");
        let listing = self.get(&dir, false).await?;
        let keys: Vec<String> = lines(listing.as_deref())
            .into_iter()
            // Entries are leaves; a sub-directory (trailing `/`) is nothing EC2 serves here.
            .filter(|k| !k.ends_with('/'))
            .collect();
        let values = try_join_all(keys.iter().map(|k| {
            let path = format!("{dir}{k}");
            async move { Ok::<_, ImdsError>(self.get(&path, false).await?.and_then(non_empty)) }
        }))
        .await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// One read, trimmed: `Ok(None)` for an item the instance does not have (404). `probe`
    /// says a transport failure means "no metadata service here" rather than a failed read.
    async fn get(&self, path: &str, probe: bool) -> Result<Option<String>, ImdsError> {
        let err = match self.client.get(path).await {
            Ok(text) => return Ok(Some(String::from(text).trim().to_string())),
            Err(e) => e,
        };
        let endpoint = self.endpoint.clone();
        let path = path.to_string();
        Err(match &err {
            SdkImdsError::ErrorResponse(r) => match r.response().status().as_u16() {
                404 => return Ok(None),
                status @ (401 | 403) => ImdsError::Unauthorized {
                    endpoint,
                    path,
                    status,
                },
                _ => ImdsError::Read {
                    endpoint,
                    path,
                    source: Box::new(err),
                },
            },
            SdkImdsError::FailedToLoadToken(_) => match token_status(&err) {
                TokenFailure::NoAnswer => ImdsError::Unreachable {
                    endpoint,
                    source: Box::new(err),
                },
                TokenFailure::Refused(status) => ImdsError::TokenRefused {
                    endpoint,
                    status,
                    source: Box::new(err),
                },
            },
            // Timeouts and connection failures on the read itself.
            _ if probe => ImdsError::Unreachable {
                endpoint,
                source: Box::new(err),
            },
            _ => ImdsError::Read {
                endpoint,
                path,
                source: Box::new(err),
            },
        })
    }
}

/// How a token request failed.
enum TokenFailure {
    /// Nothing (or nothing in time) came back.
    NoAnswer,
    /// A response came back but held no usable token.
    Refused(Option<u16>),
}

fn token_status(err: &SdkImdsError) -> TokenFailure {
    let Some(sdk) = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>())
    else {
        return TokenFailure::Refused(None);
    };
    match sdk {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => TokenFailure::NoAnswer,
        SdkError::ServiceError(ctx) => TokenFailure::Refused(Some(ctx.raw().status().as_u16())),
        SdkError::ResponseError(ctx) => TokenFailure::Refused(Some(ctx.raw().status().as_u16())),
        _ => TokenFailure::Refused(None),
    }
}

/// Non-empty lines of a listing, trimmed.
fn lines(text: Option<&str>) -> Vec<String> {
    text.unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Runs `f` on a small current-thread runtime, for synchronous commands (`bundle-image`,
/// `bundle-vol`). Must not be called from inside a tokio runtime.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, ImdsError>>) -> Result<T, ImdsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImdsError::Runtime)?
        .block_on(f)
}

/// [`Imds::instance_metadata`] for synchronous callers.
///
/// # Errors
/// As [`Imds::new`] and [`Imds::instance_metadata`].
pub fn read_instance_metadata(options: &ImdsOptions) -> Result<InstanceMetadata, ImdsError> {
    let imds = Imds::new(options)?;
    block_on(imds.instance_metadata())
}

/// [`Imds::account_id`] for synchronous callers.
///
/// # Errors
/// As [`Imds::new`] and [`Imds::account_id`].
pub fn read_account_id(options: &ImdsOptions) -> Result<String, ImdsError> {
    let imds = Imds::new(options)?;
    block_on(imds.account_id())
}

/// The manifest fields and the account of a volume bundled on this machine: what the user
/// gave (`given`, `account`), filled from instance metadata unless `no_inherit`
/// ([`inherit`]); the account comes from metadata when none was given, even with
/// `no_inherit`. Metadata is not read at all when there is nothing to take from it.
///
/// Off EC2 (metadata unavailable) that is said and the user's fields stand. With `no_inherit`
/// any failure is a warning.
///
/// # Errors
/// A failure to read metadata that exists (on EC2), unless `no_inherit`.
pub fn inherit_from_instance(
    given: InheritedFields,
    account: Option<String>,
    no_inherit: bool,
    options: &ImdsOptions,
) -> Result<(InheritedFields, Option<String>), ImdsError> {
    if no_inherit && account.is_some() {
        return Ok((given, account));
    }
    let metadata = match read_instance_metadata(options) {
        Ok(md) => Some(md),
        Err(e) if e.is_unavailable() => {
            if !no_inherit {
                tracing::info!(
                    "no instance metadata ({}): not on EC2, nothing inherited",
                    crate::bundle::error_chain(&e)
                );
            }
            None
        }
        Err(e) if no_inherit => {
            tracing::warn!(
                "instance metadata could not be read: {}",
                crate::bundle::error_chain(&e)
            );
            None
        }
        Err(e) => return Err(e),
    };
    let Some(md) = metadata else {
        return Ok((given, account));
    };
    let account = account.or_else(|| md.account_id.clone());
    let fields = if no_inherit {
        given
    } else {
        inherit(given, &md)
    };
    Ok((fields, account))
}

/// The manifest fields instance metadata can fill (docs/reference-behaviour.md §4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InheritedFields {
    /// `machine_configuration/kernel_id` (`--kernel`).
    pub kernel_id: Option<String>,
    /// `machine_configuration/ramdisk_id` (`--ramdisk`).
    pub ramdisk_id: Option<String>,
    /// `machine_configuration/product_codes` (`--productcodes`).
    pub product_codes: Vec<String>,
    /// `machine_configuration/block_device_mapping` (`-B`).
    pub block_device_mapping: Vec<Mapping>,
    /// `image/ancestry`, oldest first (no flag sets it).
    pub ancestry: Vec<String>,
}

/// ec2-bundle-vol's inheritance (docs/reference-behaviour.md §4): what the user gave wins,
/// field by field; metadata fills the rest.
///
/// * ancestry: the instance's `ancestor-ami-ids`, then its `ami-id` appended unless already
///   listed; empty when the instance has neither;
/// * kernel and ramdisk: the instance's, only if not given;
/// * product codes: the instance's, only if none were given;
/// * block-device mapping: the instance's, only if no `-B` was given, devices kept exactly as
///   EC2 gives them (`sda1`, `/dev/sda1`, `sdb`), ordered by virtual name.
pub fn inherit(given: InheritedFields, meta: &InstanceMetadata) -> InheritedFields {
    let ancestry = if given.ancestry.is_empty() {
        let mut a = meta.ancestor_ami_ids.clone();
        if let Some(ami) = meta.ami_id.as_ref().filter(|ami| !a.contains(ami)) {
            a.push(ami.clone());
        }
        a
    } else {
        given.ancestry
    };
    InheritedFields {
        kernel_id: given.kernel_id.or_else(|| meta.kernel_id.clone()),
        ramdisk_id: given.ramdisk_id.or_else(|| meta.ramdisk_id.clone()),
        product_codes: if given.product_codes.is_empty() {
            meta.product_codes.clone()
        } else {
            given.product_codes
        },
        block_device_mapping: if given.block_device_mapping.is_empty() {
            meta.block_device_mapping
                .iter()
                .map(|(v, d)| Mapping {
                    virtual_name: v.clone(),
                    device: d.clone(),
                })
                .collect()
        } else {
            given.block_device_mapping
        },
        ancestry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape EC2 serves (keys in EC2's order, nulls for a HVM instance).
    const DOCUMENT: &str = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "eu-west-1b",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : [ "abcdefghijklmnopqrstuvwxy" ],
  "imageId" : "ami-0123456789abcdef0",
  "instanceId" : "i-0123456789abcdef0",
  "instanceType" : "m3.medium",
  "kernelId" : null,
  "pendingTime" : "2026-11-25T08:00:00Z",
  "privateIp" : "10.0.0.12",
  "ramdiskId" : null,
  "region" : "eu-west-1",
  "version" : "2017-09-30"
}"#;

    #[test]
    fn identity_document_fields_are_read_and_unknown_ones_ignored() {
        let doc = IdentityDocument::parse(DOCUMENT).unwrap();
        assert_eq!(
            doc,
            IdentityDocument {
                account_id: Some("123456789012".into()),
                architecture: Some("x86_64".into()),
                availability_zone: Some("eu-west-1b".into()),
                image_id: Some("ami-0123456789abcdef0".into()),
                instance_id: Some("i-0123456789abcdef0".into()),
                instance_type: Some("m3.medium".into()),
                kernel_id: None,
                ramdisk_id: None,
                region: Some("eu-west-1".into()),
            }
        );
    }

    #[test]
    fn identity_document_missing_and_blank_fields_are_none() {
        let doc = IdentityDocument::parse(r#"{"accountId":" 210987654321 ","region":""}"#).unwrap();
        assert_eq!(doc.account_id.as_deref(), Some("210987654321"));
        assert_eq!(doc.region, None);
        assert_eq!(doc.architecture, None);
        assert!(IdentityDocument::parse("not json").is_err());
        assert!(IdentityDocument::parse(r#"{"accountId": 1234}"#).is_err());
    }

    #[test]
    fn listings_are_trimmed_lines() {
        assert_eq!(
            lines(Some("ami-1\r\n  ami-2 \n\n")),
            ["ami-1".to_string(), "ami-2".to_string()]
        );
        assert!(lines(None).is_empty());
    }

    #[test]
    fn disabled_makes_no_client_and_counts_as_unavailable() {
        let err = Imds::new(&ImdsOptions {
            endpoint: None,
            disabled: true,
        })
        .unwrap_err();
        assert!(matches!(err, ImdsError::Disabled));
        assert!(err.is_unavailable());
        assert!(err.to_string().contains(DISABLED_ENV), "{err}");
    }

    #[test]
    fn a_bad_endpoint_is_named() {
        let err = Imds::new(&ImdsOptions {
            endpoint: Some("http://bad host:80".into()),
            disabled: false,
        })
        .unwrap_err();
        assert!(matches!(err, ImdsError::BadEndpoint { .. }), "{err:?}");
        assert!(err.to_string().contains("bad host"), "{err}");
        assert!(!err.is_unavailable());
    }

    fn map(pairs: &[(&str, &str)]) -> Vec<Mapping> {
        pairs
            .iter()
            .map(|(v, d)| Mapping {
                virtual_name: v.to_string(),
                device: d.to_string(),
            })
            .collect()
    }

    fn pv_instance() -> InstanceMetadata {
        InstanceMetadata {
            ami_id: Some("ami-cccccccc".into()),
            ancestor_ami_ids: vec!["ami-aaaaaaaa".into(), "ami-bbbbbbbb".into()],
            kernel_id: Some("aki-11111111".into()),
            ramdisk_id: Some("ari-22222222".into()),
            product_codes: vec!["pc1".into(), "pc2".into()],
            block_device_mapping: [
                ("root", "/dev/sda1"),
                ("ami", "sda1"),
                ("ephemeral0", "sdb"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..InstanceMetadata::default()
        }
    }

    #[test]
    fn nothing_given_takes_everything_from_metadata() {
        let got = inherit(InheritedFields::default(), &pv_instance());
        assert_eq!(
            got,
            InheritedFields {
                kernel_id: Some("aki-11111111".into()),
                ramdisk_id: Some("ari-22222222".into()),
                product_codes: vec!["pc1".into(), "pc2".into()],
                // Devices exactly as EC2 gave them, ordered by virtual name.
                block_device_mapping: map(&[
                    ("ami", "sda1"),
                    ("ephemeral0", "sdb"),
                    ("root", "/dev/sda1"),
                ]),
                ancestry: vec![
                    "ami-aaaaaaaa".into(),
                    "ami-bbbbbbbb".into(),
                    "ami-cccccccc".into()
                ],
            }
        );
    }

    #[test]
    fn given_fields_win_one_by_one() {
        let meta = pv_instance();
        let given = InheritedFields {
            kernel_id: Some("aki-99999999".into()),
            block_device_mapping: map(&[("ami", "xvda")]),
            ..InheritedFields::default()
        };
        let got = inherit(given, &meta);
        assert_eq!(got.kernel_id.as_deref(), Some("aki-99999999"));
        assert_eq!(got.ramdisk_id.as_deref(), Some("ari-22222222"));
        assert_eq!(got.block_device_mapping, map(&[("ami", "xvda")]));
        assert_eq!(got.product_codes, ["pc1", "pc2"]);

        let given = InheritedFields {
            ramdisk_id: Some("ari-99999999".into()),
            product_codes: vec!["mine".into()],
            ..InheritedFields::default()
        };
        let got = inherit(given, &meta);
        assert_eq!(got.kernel_id.as_deref(), Some("aki-11111111"));
        assert_eq!(got.ramdisk_id.as_deref(), Some("ari-99999999"));
        assert_eq!(got.product_codes, ["mine"]);
        assert_eq!(got.block_device_mapping.len(), 3);
    }

    #[test]
    fn current_ami_is_appended_once() {
        let mut meta = pv_instance();
        meta.ancestor_ami_ids = vec!["ami-aaaaaaaa".into(), "ami-cccccccc".into()];
        let got = inherit(InheritedFields::default(), &meta);
        assert_eq!(got.ancestry, ["ami-aaaaaaaa", "ami-cccccccc"]);

        // No ancestors: the current AMI alone.
        meta.ancestor_ami_ids.clear();
        let got = inherit(InheritedFields::default(), &meta);
        assert_eq!(got.ancestry, ["ami-cccccccc"]);

        // Ancestors but no ami-id: the list alone.
        let meta = InstanceMetadata {
            ancestor_ami_ids: vec!["ami-aaaaaaaa".into()],
            ..InstanceMetadata::default()
        };
        assert_eq!(
            inherit(InheritedFields::default(), &meta).ancestry,
            ["ami-aaaaaaaa"]
        );
    }

    #[test]
    fn hvm_instance_without_metadata_items_changes_nothing() {
        let given = InheritedFields {
            product_codes: vec!["mine".into()],
            ..InheritedFields::default()
        };
        let got = inherit(given.clone(), &InstanceMetadata::default());
        assert_eq!(got, given);
    }
}
