//! Flags shared by the commands that talk to AWS, and the runtime they run on.

use clap::Args;

use crate::cloud::config::{CloudConfig, CloudOptions};

/// Region, credentials and endpoints.
#[derive(Debug, Args, Clone, Default)]
pub struct CloudArgs {
    /// AWS region (else AWS_REGION, the profile, or the instance's region on EC2)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Named profile from the AWS config files
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Endpoint for every AWS service (S3-compatible stores, local emulators)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Endpoint for S3 only
    #[arg(long, value_name = "URL")]
    pub s3_endpoint_url: Option<String>,
    /// Endpoint for EC2 only
    #[arg(long, value_name = "URL")]
    pub ec2_endpoint_url: Option<String>,
    /// Path-style S3 requests (endpoint/bucket/key)
    #[arg(long)]
    pub path_style: bool,
    /// Access key id (else the default credential chain: environment, profile, SSO, instance
    /// role); visible to other users in the process list
    #[arg(long, value_name = "ID")]
    pub access_key: Option<String>,
    /// Secret access key (prefer the environment or a profile: argv is visible to others)
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Session token for temporary credentials
    #[arg(long, value_name = "TOKEN")]
    pub session_token: Option<String>,
    /// Seconds one attempt of one request may take before it is abandoned and retried (raise it
    /// on a slow link); a transfer that moves no bytes for this long (at most 20 s) is abandoned
    /// too [default: 120]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub attempt_timeout: Option<u64>,
}

impl CloudArgs {
    /// The library's options.
    pub fn options(&self) -> CloudOptions {
        if self.secret_key.is_some() {
            tracing::warn!(
                "--secret-key on the command line is visible to other users in the process list; prefer AWS_SECRET_ACCESS_KEY, a profile or an instance role"
            );
        }
        CloudOptions {
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            s3_endpoint_url: self.s3_endpoint_url.clone(),
            ec2_endpoint_url: self.ec2_endpoint_url.clone(),
            sts_endpoint_url: None,
            force_path_style: self.path_style,
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            session_token: self.session_token.clone(),
            attempt_timeout: self.attempt_timeout.map(std::time::Duration::from_secs),
        }
    }

    /// Loads the AWS configuration.
    pub async fn load(&self) -> anyhow::Result<CloudConfig> {
        Ok(CloudConfig::load(self.options()).await?)
    }
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
