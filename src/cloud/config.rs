//! AWS client configuration from command-line options: region, profile, credentials, endpoints
//! (for S3-compatible stores and the local emulator), retries and timeouts.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// Attempts per request (first try included) before an error is returned; the SDK backs off
/// exponentially with jitter between attempts.
pub const MAX_ATTEMPTS: u32 = 6;
/// Time to establish a TCP/TLS connection.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// One attempt of one request, including sending a 10 MiB part at a slow 200 KB/s, unless
/// `--attempt-timeout` says otherwise. For a GET the SDK's attempt ends with the response head;
/// a body that then stalls is caught by the stalled-stream protection ([`STALL_GRACE_SECS`]).
pub const ATTEMPT_TIMEOUT_SECS: u64 = 120;
/// A transfer (request body sent, response body received) that moves no bytes for this long is
/// abandoned, or for the attempt timeout when that is shorter: the SDK's stalled-stream
/// protection, set explicitly so that it does not depend on the behaviour version's defaults.
/// An abandoned GET body is retried by amibundle (`cloud::s3`'s `download::retry_body`).
pub const STALL_GRACE_SECS: u64 = 20;
/// Test-only: an environment variable giving the SDK's initial retry backoff in milliseconds
/// (default one second). The fault-injection tests set it so that hundreds of injected
/// failures do not add minutes of sleeping; users have no reason to set it, and it is not
/// documented as an option.
pub const RETRY_BASE_ENV: &str = "AMIBUNDLE_RETRY_BASE_MS";

/// The first backoff between retries: one second (the SDK's default), or [`RETRY_BASE_ENV`]
/// milliseconds when set.
pub fn retry_base() -> Duration {
    std::env::var(RETRY_BASE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// The retry policy: [`MAX_ATTEMPTS`] with the SDK's standard backoff, its base shortened only
/// when [`RETRY_BASE_ENV`] holds a number of milliseconds.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(retry_base())
}

/// The attempt timeout and the stalled-stream grace period for `attempt_timeout`.
pub fn timeouts(attempt_timeout: Option<Duration>) -> (Duration, Duration) {
    let attempt = attempt_timeout.unwrap_or(Duration::from_secs(ATTEMPT_TIMEOUT_SECS));
    (attempt, attempt.min(Duration::from_secs(STALL_GRACE_SECS)))
}

/// Where and as whom to talk to AWS.
#[derive(Debug, Clone, Default)]
pub struct CloudOptions {
    /// Region; else the environment, the profile, then instance metadata.
    pub region: Option<String>,
    /// Named profile of the shared config files.
    pub profile: Option<String>,
    /// One endpoint for every service (S3-compatible store, emulator).
    pub endpoint_url: Option<String>,
    /// S3 endpoint, overriding `endpoint_url` for S3.
    pub s3_endpoint_url: Option<String>,
    /// EC2 endpoint, overriding `endpoint_url` for EC2.
    pub ec2_endpoint_url: Option<String>,
    /// STS endpoint, overriding `endpoint_url` for STS.
    pub sts_endpoint_url: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), for emulators and dotted bucket names.
    pub force_path_style: bool,
    /// Explicit access key id (else the default credential chain).
    pub access_key: Option<String>,
    /// Explicit secret access key.
    pub secret_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// One attempt of one request (default [`ATTEMPT_TIMEOUT_SECS`]); also caps the
    /// stalled-stream grace period ([`timeouts`]).
    pub attempt_timeout: Option<Duration>,
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Only half of a key pair was given.
    #[error("--access-key and --secret-key go together: give both or neither")]
    HalfKeyPair,
    /// A temporary key without its token.
    #[error(
        "access key {key_id} is temporary (it starts with ASIA) but no session token was given: pass --session-token (Packer: add -t {{{{.Token}}}})"
    )]
    MissingSessionToken {
        /// The access key id (not secret).
        key_id: String,
    },
    /// The system has no CA certificates, so no HTTPS connection could be trusted.
    #[error(
        "no CA certificates found on this system (looked where OpenSSL does, and in SSL_CERT_FILE / SSL_CERT_DIR): HTTPS to AWS cannot be trusted; install them (Debian, Ubuntu: apt-get install ca-certificates; Fedora, RHEL, Amazon Linux: dnf install ca-certificates) or point SSL_CERT_FILE at a bundle"
    )]
    NoCaCertificates,
    /// No region anywhere.
    #[error(
        "no region: pass --region, set AWS_REGION or a region in your AWS profile (on EC2 the instance's region is used)"
    )]
    NoRegion,
}

/// The loaded configuration: the SDK's shared config plus our per-service overrides.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Shared SDK configuration.
    pub sdk: SdkConfig,
    /// The options it was made from.
    pub options: CloudOptions,
}

impl CloudConfig {
    /// Resolves region and credentials. Network access (instance metadata) happens only when the
    /// region must come from it.
    pub async fn load(options: CloudOptions) -> Result<Self, ConfigError> {
        // The SDK's HTTPS client loads the system's CA certificates on its first request and
        // panics when there are none: say so first, and what to do.
        if rustls_native_certs::load_native_certs().certs.is_empty() {
            return Err(ConfigError::NoCaCertificates);
        }
        let (attempt, grace) = timeouts(options.attempt_timeout);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry_config())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS))
                    .operation_attempt_timeout(attempt)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(grace)
                    .build(),
            );
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        let region = options
            .region
            .as_deref()
            .map(|r| region_of_location(Some(r)));
        let region_chain =
            RegionProviderChain::first_try(region.map(Region::new)).or_default_provider();
        loader = loader.region(region_chain);
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        match (&options.access_key, &options.secret_key) {
            (Some(ak), Some(sk)) => {
                if ak.starts_with("ASIA") && options.session_token.is_none() {
                    return Err(ConfigError::MissingSessionToken { key_id: ak.clone() });
                }
                loader = loader.credentials_provider(Credentials::new(
                    ak.clone(),
                    sk.clone(),
                    options.session_token.clone(),
                    None,
                    "amibundle-command-line",
                ));
            }
            (None, None) => {}
            _ => return Err(ConfigError::HalfKeyPair),
        }
        let sdk = loader.load().await;
        Ok(Self { sdk, options })
    }

    /// The configured region, if any (flag, environment, profile, instance metadata).
    pub fn region(&self) -> Option<&str> {
        self.sdk.region().map(Region::as_ref)
    }

    /// The configured region, or an error saying how to give one.
    pub fn require_region(&self) -> Result<&str, ConfigError> {
        self.region().ok_or(ConfigError::NoRegion)
    }

    /// An S3 client for `region` (buckets live in a region; EC2 registers from its own).
    pub fn s3_client(&self, region: &str) -> aws_sdk_s3::Client {
        let mut b = aws_sdk_s3::config::Builder::from(&self.sdk)
            .region(Region::new(region.to_string()))
            .force_path_style(self.options.force_path_style);
        if let Some(url) = self
            .options
            .s3_endpoint_url
            .as_ref()
            .or(self.options.endpoint_url.as_ref())
        {
            b = b.endpoint_url(url);
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }

    /// An EC2 client for `region`.
    pub fn ec2_client(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut b =
            aws_sdk_ec2::config::Builder::from(&self.sdk).region(Region::new(region.to_string()));
        if let Some(url) = self
            .options
            .ec2_endpoint_url
            .as_ref()
            .or(self.options.endpoint_url.as_ref())
        {
            b = b.endpoint_url(url);
        }
        aws_sdk_ec2::Client::from_conf(b.build())
    }

    /// An EBS direct APIs client for `region` (the snapshots of `to-ebs`).
    pub fn ebs_client(&self, region: &str) -> aws_sdk_ebs::Client {
        let mut b =
            aws_sdk_ebs::config::Builder::from(&self.sdk).region(Region::new(region.to_string()));
        if let Some(url) = &self.options.endpoint_url {
            b = b.endpoint_url(url);
        }
        aws_sdk_ebs::Client::from_conf(b.build())
    }

    /// An STS client (account id of the caller).
    pub fn sts_client(&self) -> aws_sdk_sts::Client {
        let mut b = aws_sdk_sts::config::Builder::from(&self.sdk);
        if let Some(url) = self
            .options
            .sts_endpoint_url
            .as_ref()
            .or(self.options.endpoint_url.as_ref())
        {
            b = b.endpoint_url(url);
        }
        aws_sdk_sts::Client::from_conf(b.build())
    }
}

/// The region of a bucket from its `LocationConstraint`: none, empty or the legacy `US` mean
/// us-east-1, the legacy `EU` means eu-west-1.
pub fn region_of_location(constraint: Option<&str>) -> String {
    match constraint {
        None | Some("") | Some("US") => "us-east-1".to_string(),
        Some("EU") => "eu-west-1".to_string(),
        Some(other) => other.to_string(),
    }
}
