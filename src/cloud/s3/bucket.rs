//! The bucket preflight: [`ensure_bucket`] checks region, owner and ACLs before any object is
//! sent, and creates a missing bucket with ACLs enabled; [`bucket_region`] finds where an
//! existing bucket is.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, ObjectOwnership, OwnershipControls,
    OwnershipControlsRule,
};

use super::{S3Error, local_failure, request_error, validate_bucket_name};

/// How to treat a missing or misconfigured bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketPolicy {
    /// Create the bucket when it does not exist.
    pub create: bool,
    /// Switch BucketOwnerEnforced to BucketOwnerPreferred instead of failing.
    pub fix_ownership: bool,
}

/// What [`ensure_bucket`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketState {
    /// Existed, in the right region, ACLs usable.
    Existing,
    /// Created now.
    Created,
}

/// Checks that `bucket` exists in `region`, is ours and allows ACLs; creates it (ACLs enabled)
/// when missing and allowed. Every check happens before any object is sent. `account`, when
/// known, is the account that must own the bucket.
pub async fn ensure_bucket(
    s3: &Client,
    bucket: &str,
    region: &str,
    account: Option<&str>,
    policy: BucketPolicy,
) -> Result<BucketState, S3Error> {
    validate_bucket_name(bucket)?;
    let state = match s3.get_bucket_location().bucket(bucket).send().await {
        Ok(out) => {
            let actual = crate::cloud::config::region_of_location(
                out.location_constraint()
                    .map(BucketLocationConstraint::as_str),
            );
            if actual != region {
                return Err(S3Error::RegionMismatch {
                    bucket: bucket.into(),
                    actual,
                    wanted: region.into(),
                });
            }
            BucketState::Existing
        }
        Err(err) => match err.code() {
            Some("NoSuchBucket") if policy.create => create_bucket(s3, bucket, region).await?,
            Some("NoSuchBucket") => {
                return Err(S3Error::NoSuchBucket {
                    bucket: bucket.into(),
                });
            }
            Some("AccessDenied" | "AllAccessDisabled") => {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
            _ => return Err(request_error("locating bucket", bucket, "", err)),
        },
    };
    if state == BucketState::Existing {
        check_owner(s3, bucket, account).await?;
    }
    check_ownership(s3, bucket, policy.fix_ownership).await?;
    Ok(state)
}

/// Refuses a bucket that belongs to another account. S3 answers `x-amz-expected-bucket-owner`
/// with 403 when the owner differs; where that header is not enforced (emulators), the bucket
/// must appear in the caller's own bucket list.
async fn check_owner(s3: &Client, bucket: &str, account: Option<&str>) -> Result<(), S3Error> {
    if let Some(account) = account {
        if let Err(err) = s3
            .head_bucket()
            .bucket(bucket)
            .expected_bucket_owner(account)
            .send()
            .await
        {
            let status = err.raw_response().map(|r| r.status().as_u16());
            if status == Some(403) {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
            return Err(request_error(
                "checking the owner of bucket",
                bucket,
                "",
                err,
            ));
        }
    }
    let mut token: Option<String> = None;
    loop {
        let out = match s3
            .list_buckets()
            .set_continuation_token(token.clone())
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                // Listing needs s3:ListAllMyBuckets, which pipelines often lack: then the
                // expected-owner check above is all we can do.
                tracing::debug!(
                    "cannot list buckets to check ownership: {}",
                    DisplayErrorContext(&err)
                );
                return Ok(());
            }
        };
        if out.buckets().iter().any(|b| b.name() == Some(bucket)) {
            return Ok(());
        }
        match out.continuation_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
        }
    }
}

async fn create_bucket(s3: &Client, bucket: &str, region: &str) -> Result<BucketState, S3Error> {
    tracing::info!("creating bucket {bucket} in {region}");
    let mut req = s3
        .create_bucket()
        .bucket(bucket)
        // ACLs must stay enabled: EC2 reads bundles through the aws-exec-read grant.
        .object_ownership(ObjectOwnership::BucketOwnerPreferred);
    // us-east-1 is the one region that takes no location constraint.
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => Ok(BucketState::Created),
        Err(err) => match err.code() {
            Some("BucketAlreadyOwnedByYou") => Ok(BucketState::Existing),
            Some("BucketAlreadyExists") => Err(S3Error::NotYours {
                bucket: bucket.into(),
            }),
            _ => Err(request_error("creating bucket", bucket, "", err)),
        },
    }
}

async fn check_ownership(s3: &Client, bucket: &str, fix: bool) -> Result<(), S3Error> {
    let enforced = match s3
        .get_bucket_ownership_controls()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out
            .ownership_controls()
            .map(|c| {
                c.rules()
                    .iter()
                    .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
            })
            .unwrap_or(false),
        // No ownership controls at all: the pre-2023 default, ACLs enabled.
        Err(err) if err.code() == Some("OwnershipControlsNotFoundError") => false,
        Err(err) => {
            return Err(request_error(
                "reading ownership controls of",
                bucket,
                "",
                err,
            ));
        }
    };
    if !enforced {
        return Ok(());
    }
    if !fix {
        return Err(S3Error::AclsDisabled {
            bucket: bucket.into(),
        });
    }
    tracing::warn!(
        "bucket {bucket} has ACLs disabled; switching Object Ownership to BucketOwnerPreferred (--fix-ownership)"
    );
    let rule = OwnershipControlsRule::builder()
        .object_ownership(ObjectOwnership::BucketOwnerPreferred)
        .build()
        .map_err(|e| local_failure("building ownership controls for", bucket, "", e))?;
    let controls = OwnershipControls::builder()
        .rules(rule)
        .build()
        .map_err(|e| local_failure("building ownership controls for", bucket, "", e))?;
    s3.put_bucket_ownership_controls()
        .bucket(bucket)
        .ownership_controls(controls)
        .send()
        .await
        .map_err(|err| request_error("enabling ACLs on", bucket, "", err))?;
    Ok(())
}

/// An S3 client for an existing bucket, in the bucket's own region (found with
/// GetBucketLocation when it differs from the configured one, or none is configured).
pub async fn client_for_bucket(
    cloud: &crate::cloud::config::CloudConfig,
    bucket: &str,
) -> Result<Client, S3Error> {
    let configured = cloud.region().unwrap_or("us-east-1").to_string();
    let client = cloud.s3_client(&configured);
    let actual = bucket_region(&client, bucket).await?;
    if actual == configured {
        return Ok(client);
    }
    tracing::info!("bucket {bucket} is in {actual}");
    Ok(cloud.s3_client(&actual))
}

/// The region a bucket is in (for commands that work on an existing bucket wherever it is).
pub async fn bucket_region(s3: &Client, bucket: &str) -> Result<String, S3Error> {
    match s3.get_bucket_location().bucket(bucket).send().await {
        Ok(out) => Ok(crate::cloud::config::region_of_location(
            out.location_constraint()
                .map(BucketLocationConstraint::as_str),
        )),
        Err(err) => match err.code() {
            Some("NoSuchBucket") => Err(S3Error::NoSuchBucket {
                bucket: bucket.into(),
            }),
            Some("AccessDenied" | "AllAccessDisabled") => Err(S3Error::NotYours {
                bucket: bucket.into(),
            }),
            _ => Err(request_error("locating bucket", bucket, "", err)),
        },
    }
}
