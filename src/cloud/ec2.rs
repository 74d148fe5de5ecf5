//! EC2: registering an instance-store AMI from a bundle in S3, idempotently, and waiting for it.

use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{ArchitectureValues, BlockDeviceMapping, Filter, Image, ImageState, Tag};

/// Tag recording the manifest an AMI was registered from. EC2 keeps `ImageLocation` itself, but
/// emulators do not; the tag makes re-registration idempotent everywhere.
pub const LOCATION_TAG: &str = "amibundle:image-location";

/// Default root device of an HVM instance-store AMI.
pub const DEFAULT_ROOT_DEVICE: &str = "/dev/sda1";

/// How long to wait for `available` by default.
pub const WAIT_TIMEOUT_SECS: u64 = 30 * 60;

/// Interval between DescribeImages polls while waiting.
const POLL_INTERVAL_SECS: u64 = 5;

/// What went wrong with EC2.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// The AMI name breaks EC2's rules.
    #[error("AMI name {name:?} is not valid: {why} (--name)")]
    BadName {
        /// The name.
        name: String,
        /// Which rule.
        why: &'static str,
    },
    /// An option that cannot apply to instance-store AMIs.
    #[error("{option} cannot be used for an instance-store AMI: {why}")]
    NotForInstanceStore {
        /// The flag.
        option: &'static str,
        /// Why.
        why: &'static str,
    },
    /// An AMI of that name exists from another bundle.
    #[error(
        "an AMI named {name:?} already exists ({image_id}) registered from {existing}; pass --force to deregister it and register {wanted}, or choose another --name"
    )]
    NameTaken {
        /// Name.
        name: String,
        /// The existing AMI.
        image_id: String,
        /// Its location (or "another location").
        existing: String,
        /// Ours.
        wanted: String,
    },
    /// The AMI did not become available.
    #[error("AMI {image_id} is {state} after {waited_secs} s{reason}")]
    NotAvailable {
        /// AMI id.
        image_id: String,
        /// Last state.
        state: String,
        /// Time waited.
        waited_secs: u64,
        /// EC2's reason, if any (starts with ": ").
        reason: String,
    },
    /// No AMI of that id in the region.
    #[error("AMI {image_id} does not exist in {region} (or is not visible to these credentials)")]
    NoSuchImage {
        /// AMI id.
        image_id: String,
        /// Region looked in.
        region: String,
    },
    /// The AMI is not an instance-store AMI, so it has no bundle to copy.
    #[error(
        "AMI {image_id} in {region} has no image location (root device type {root_device_type}): only instance-store AMIs registered from a bundle in S3 can be copied this way"
    )]
    NotInstanceStore {
        /// AMI id.
        image_id: String,
        /// Region.
        region: String,
        /// What EC2 says it is.
        root_device_type: String,
    },
    /// A request failed.
    #[error("{action} in {region}: {detail}")]
    Request {
        /// What we were doing.
        action: &'static str,
        /// Region.
        region: String,
        /// The error with its causes.
        detail: String,
    },
}

fn request_error<E>(
    action: &'static str,
    region: &str,
    err: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = match (err.code(), err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    Ec2Error::Request {
        action,
        region: region.to_string(),
        detail,
    }
}

/// EC2's AMI name rules: 3–128 characters of letters, digits, spaces and `( ) [ ] . / - ' @ _`.
pub fn validate_ami_name(name: &str) -> Result<(), Ec2Error> {
    let bad = |why| {
        Err(Ec2Error::BadName {
            name: name.to_string(),
            why,
        })
    };
    if !(3..=128).contains(&name.chars().count()) {
        return bad("it must be 3 to 128 characters long");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c);
    if !name.chars().all(allowed) {
        return bad("only letters, digits, spaces and ( ) [ ] . / - ' @ _ are allowed");
    }
    Ok(())
}

/// What to register.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// `bucket/prefix/name.manifest.xml`.
    pub image_location: String,
    /// AMI name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Architecture (from the manifest).
    pub architecture: String,
    /// `hvm` (default) or `paravirtual`.
    pub virtualization_type: String,
    /// Root device name.
    pub root_device_name: String,
    /// `(device, virtual name)` pairs, e.g. `("/dev/sdb", "ephemeral0")`.
    pub ephemeral_mappings: Vec<(String, String)>,
    /// ENA support (X1).
    pub ena_support: bool,
    /// SR-IOV `simple` (C3, D2, I2, R3).
    pub sriov_net_support: bool,
    /// Kernel (paravirtual only).
    pub kernel_id: Option<String>,
    /// Ramdisk (paravirtual only).
    pub ramdisk_id: Option<String>,
    /// Extra tags.
    pub tags: Vec<(String, String)>,
    /// Deregister an AMI of the same name from another location first.
    pub force: bool,
}

/// The four instance-store volumes instance-store families expose, mapped the classic way.
pub fn default_ephemeral_mappings() -> Vec<(String, String)> {
    ["b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, letter)| (format!("/dev/sd{letter}"), format!("ephemeral{i}")))
        .collect()
}

/// What [`register_image`] did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The AMI id.
    pub image_id: String,
    /// False when an existing AMI from the same location was reused.
    pub created: bool,
}

/// The AMI of ours named `name`, if any (AMI names are unique per account and region).
async fn own_image_named(
    ec2: &Client,
    region: &str,
    name: &str,
) -> Result<Option<Image>, Ec2Error> {
    let existing = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| request_error("looking for an existing AMI", region, e))?;
    Ok(existing.images().first().cloned())
}

fn tag_value<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Registers the AMI, or reuses ours of the same name and location (re-runs are idempotent).
pub async fn register_image(
    ec2: &Client,
    region: &str,
    req: &RegisterRequest,
) -> Result<Registered, Ec2Error> {
    validate_ami_name(&req.name)?;
    if req.virtualization_type == "hvm" && (req.kernel_id.is_some() || req.ramdisk_id.is_some()) {
        return Err(Ec2Error::NotForInstanceStore {
            option: "--kernel-id/--ramdisk-id",
            why: "HVM AMIs boot their own kernel; kernel and ramdisk ids are for --virtualization-type paravirtual",
        });
    }
    if let Some(image) = own_image_named(ec2, region, &req.name).await? {
        let image = &image;
        let image_id = image.image_id().unwrap_or_default().to_string();
        let location = image
            .image_location()
            .or_else(|| tag_value(image, LOCATION_TAG));
        if location == Some(req.image_location.as_str()) {
            tracing::info!(
                "AMI {image_id} named {} is already registered from {}",
                req.name,
                req.image_location
            );
            return Ok(Registered {
                image_id,
                created: false,
            });
        }
        if !req.force {
            return Err(Ec2Error::NameTaken {
                name: req.name.clone(),
                image_id,
                existing: location.unwrap_or("another location").to_string(),
                wanted: req.image_location.clone(),
            });
        }
        tracing::warn!(
            "deregistering {image_id} (--force) to register {} under the same name",
            req.image_location
        );
        ec2.deregister_image()
            .image_id(&image_id)
            .send()
            .await
            .map_err(|e| request_error("deregistering the old AMI", region, e))?;
    }

    let mappings: Vec<BlockDeviceMapping> = req
        .ephemeral_mappings
        .iter()
        .map(|(device, virtual_name)| {
            BlockDeviceMapping::builder()
                .device_name(device)
                .virtual_name(virtual_name)
                .build()
        })
        .collect();
    let call = ec2
        .register_image()
        .name(&req.name)
        .image_location(&req.image_location)
        .architecture(ArchitectureValues::from(req.architecture.as_str()))
        .virtualization_type(&req.virtualization_type)
        .root_device_name(&req.root_device_name)
        .set_block_device_mappings(Some(mappings))
        .set_description(req.description.clone())
        .set_kernel_id(req.kernel_id.clone())
        .set_ramdisk_id(req.ramdisk_id.clone());
    let networking = (req.ena_support, req.sriov_net_support);
    let source = (LOCATION_TAG, req.image_location.as_str());
    send_and_tag(ec2, region, call, networking, source, &req.tags).await
}

/// Sends a RegisterImage `call` (with ENA and SR-IOV as `networking` says) and tags the new
/// AMI with `source` (what it was registered from, for idempotent reruns) and `tags`.
async fn send_and_tag(
    ec2: &Client,
    region: &str,
    mut call: aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder,
    networking: (bool, bool),
    source: (&str, &str),
    tags: &[(String, String)],
) -> Result<Registered, Ec2Error> {
    if networking.0 {
        call = call.ena_support(true);
    }
    if networking.1 {
        call = call.sriov_net_support("simple");
    }
    let out = call
        .send()
        .await
        .map_err(|e| request_error("registering the AMI", region, e))?;
    let image_id = out.image_id().unwrap_or_default().to_string();
    let mut all = vec![Tag::builder().key(source.0).value(source.1).build()];
    all.extend(
        tags.iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build()),
    );
    ec2.create_tags()
        .resources(&image_id)
        .set_tags(Some(all))
        .send()
        .await
        .map_err(|e| request_error("tagging the AMI", region, e))?;
    Ok(Registered {
        image_id,
        created: true,
    })
}

/// An EBS-backed AMI to register from a snapshot (`to-ebs`).
#[derive(Debug, Clone)]
pub struct EbsRegistration {
    /// AMI name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `x86_64`, `i386` or `arm64`.
    pub architecture: String,
    /// The root volume's snapshot.
    pub snapshot_id: String,
    /// The root device (`/dev/xvda`).
    pub root_device_name: String,
    /// The root volume's type (`gp3`).
    pub volume_type: String,
    /// ENA.
    pub ena_support: bool,
    /// SR-IOV "simple" networking.
    pub sriov_net_support: bool,
    /// `legacy-bios` or `uefi`.
    pub boot_mode: String,
    /// Instance-store mappings carried over: (device, `ephemeralN`).
    pub ephemeral_mappings: Vec<(String, String)>,
    /// Tags on the AMI.
    pub tags: Vec<(String, String)>,
}

/// The tag that records which snapshot an EBS AMI registered by amibundle boots from (the
/// idempotency of [`register_ebs_image`]: same name and same snapshot is the same AMI).
const SNAPSHOT_TAG: &str = "amibundle:root-snapshot";

/// Refuses `name` when an AMI of ours already has it (before a snapshot is made for a new one);
/// `force` lets [`register_ebs_image`] deregister it instead.
pub async fn refuse_taken_name(ec2: &Client, region: &str, name: &str) -> Result<(), Ec2Error> {
    validate_ami_name(name)?;
    match own_image_named(ec2, region, name).await?.as_ref() {
        None => Ok(()),
        Some(image) => Err(Ec2Error::NameTaken {
            name: name.to_string(),
            image_id: image.image_id().unwrap_or_default().to_string(),
            existing: image
                .block_device_mappings()
                .iter()
                .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                .or_else(|| image.image_location())
                .unwrap_or("another source")
                .to_string(),
            wanted: "a new snapshot of this image".to_string(),
        }),
    }
}

/// Registers an HVM EBS-backed AMI booting from `req.snapshot_id` (gp3, deleted on
/// termination), idempotent by name: an AMI of that name booting from the same snapshot is
/// reused, one booting from anything else is refused (unless `force`, which deregisters it).
pub async fn register_ebs_image(
    ec2: &Client,
    region: &str,
    req: &EbsRegistration,
    force: bool,
) -> Result<Registered, Ec2Error> {
    validate_ami_name(&req.name)?;
    if let Some(image) = own_image_named(ec2, region, &req.name).await? {
        let image = &image;
        let image_id = image.image_id().unwrap_or_default().to_string();
        let root_snapshot = image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == image.root_device_name())
            .and_then(|m| m.ebs())
            .and_then(|e| e.snapshot_id())
            .or_else(|| tag_value(image, SNAPSHOT_TAG));
        if root_snapshot == Some(req.snapshot_id.as_str()) {
            tracing::info!(
                "AMI {image_id} named {} already boots from {}",
                req.name,
                req.snapshot_id
            );
            return Ok(Registered {
                image_id,
                created: false,
            });
        }
        if !force {
            return Err(Ec2Error::NameTaken {
                name: req.name.clone(),
                image_id,
                existing: root_snapshot.unwrap_or("another source").to_string(),
                wanted: req.snapshot_id.clone(),
            });
        }
        tracing::warn!("deregistering {image_id} (--force) to register a new AMI of that name");
        ec2.deregister_image()
            .image_id(&image_id)
            .send()
            .await
            .map_err(|e| request_error("deregistering the old AMI", region, e))?;
    }
    let root = BlockDeviceMapping::builder()
        .device_name(&req.root_device_name)
        .ebs(
            aws_sdk_ec2::types::EbsBlockDevice::builder()
                .snapshot_id(&req.snapshot_id)
                .volume_type(aws_sdk_ec2::types::VolumeType::from(
                    req.volume_type.as_str(),
                ))
                .delete_on_termination(true)
                .build(),
        )
        .build();
    let mut mappings = vec![root];
    mappings.extend(req.ephemeral_mappings.iter().map(|(device, virtual_name)| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .virtual_name(virtual_name)
            .build()
    }));
    let call = ec2
        .register_image()
        .name(&req.name)
        .architecture(ArchitectureValues::from(req.architecture.as_str()))
        .virtualization_type("hvm")
        .root_device_name(&req.root_device_name)
        .boot_mode(aws_sdk_ec2::types::BootModeValues::from(
            req.boot_mode.as_str(),
        ))
        .set_block_device_mappings(Some(mappings))
        .set_description(req.description.clone());
    let networking = (req.ena_support, req.sriov_net_support);
    let source = (SNAPSHOT_TAG, req.snapshot_id.as_str());
    send_and_tag(ec2, region, call, networking, source, &req.tags).await
}

/// Polls until the AMI is `available`; fails on `failed`/`invalid`/`error` or at the deadline.
pub async fn wait_available(
    ec2: &Client,
    region: &str,
    image_id: &str,
    timeout: Duration,
) -> Result<(), Ec2Error> {
    let started = Instant::now();
    loop {
        let out = ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| request_error("waiting for the AMI", region, e))?;
        let image = out.images().first();
        let state = image.and_then(|i| i.state()).cloned();
        let reason = image
            .and_then(|i| i.state_reason())
            .and_then(|r| r.message())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match state {
            Some(ImageState::Available) => return Ok(()),
            Some(
                ImageState::Failed
                | ImageState::Invalid
                | ImageState::Error
                | ImageState::Deregistered,
            )
            | None => {
                return Err(Ec2Error::NotAvailable {
                    image_id: image_id.to_string(),
                    state: state
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|| "gone".into()),
                    waited_secs: started.elapsed().as_secs(),
                    reason,
                });
            }
            Some(other) => {
                if started.elapsed() >= timeout {
                    return Err(Ec2Error::NotAvailable {
                        image_id: image_id.to_string(),
                        state: other.as_str().to_string(),
                        waited_secs: started.elapsed().as_secs(),
                        reason,
                    });
                }
                tokio::time::sleep(Duration::from_secs(POLL_INTERVAL_SECS)).await;
            }
        }
    }
}

/// What `copy --ami` reads of a registered instance-store AMI to register its copies alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// AMI id.
    pub image_id: String,
    /// AMI name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `i386`, `x86_64` or `arm64` (EC2 always says; emulators may not).
    pub architecture: Option<String>,
    /// `hvm` or `paravirtual` (EC2 always says; emulators may not).
    pub virtualization_type: Option<String>,
    /// Root device name.
    pub root_device_name: Option<String>,
    /// `(device, virtual name)` of its instance-store mappings.
    pub ephemeral_mappings: Vec<(String, String)>,
    /// Device names of its other mappings (EBS volumes, suppressed devices), which
    /// [`RegisterRequest`] cannot express.
    pub other_mappings: Vec<String>,
    /// ENA support.
    pub ena_support: bool,
    /// SR-IOV `simple`.
    pub sriov_net_support: bool,
    /// PV kernel.
    pub kernel_id: Option<String>,
    /// PV ramdisk.
    pub ramdisk_id: Option<String>,
    /// `bucket/prefix/name.manifest.xml`: EC2's `ImageLocation`, else our [`LOCATION_TAG`]
    /// (emulators store no location).
    pub image_location: String,
}

/// Describes AMI `image_id` in `region` for copying it.
///
/// # Errors
///
/// [`Ec2Error::NoSuchImage`], [`Ec2Error::NotInstanceStore`] (no image location: an EBS-backed
/// AMI), [`Ec2Error::Request`].
pub async fn describe_image(
    ec2: &Client,
    region: &str,
    image_id: &str,
) -> Result<SourceImage, Ec2Error> {
    let no_such = || Ec2Error::NoSuchImage {
        image_id: image_id.to_string(),
        region: region.to_string(),
    };
    let out = match ec2.describe_images().image_ids(image_id).send().await {
        Ok(out) => out,
        Err(err) if err.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => {
            return Err(no_such());
        }
        Err(err) => return Err(request_error("describing the source AMI", region, err)),
    };
    let image = out.images().first().ok_or_else(no_such)?;
    source_image(image, image_id, region)
}

/// The copy-relevant view of a described image.
fn source_image(image: &Image, image_id: &str, region: &str) -> Result<SourceImage, Ec2Error> {
    let location = image
        .image_location()
        .filter(|l| !l.is_empty())
        .or_else(|| tag_value(image, LOCATION_TAG));
    let Some(location) = location else {
        return Err(Ec2Error::NotInstanceStore {
            image_id: image_id.to_string(),
            region: region.to_string(),
            root_device_type: image
                .root_device_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "unknown".into()),
        });
    };
    let mut ephemeral_mappings = Vec::new();
    let mut other_mappings = Vec::new();
    for m in image.block_device_mappings() {
        let device = m.device_name().unwrap_or_default().to_string();
        match m.virtual_name() {
            Some(v) if v.starts_with("ephemeral") => {
                ephemeral_mappings.push((device, v.to_string()));
            }
            _ => other_mappings.push(device),
        }
    }
    Ok(SourceImage {
        image_id: image_id.to_string(),
        name: image.name().unwrap_or_default().to_string(),
        description: image
            .description()
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        architecture: image.architecture().map(|a| a.as_str().to_string()),
        virtualization_type: image.virtualization_type().map(|v| v.as_str().to_string()),
        root_device_name: image.root_device_name().map(str::to_string),
        ephemeral_mappings,
        other_mappings,
        ena_support: image.ena_support().unwrap_or(false),
        sriov_net_support: image.sriov_net_support() == Some("simple"),
        kernel_id: image.kernel_id().map(str::to_string),
        ramdisk_id: image.ramdisk_id().map(str::to_string),
        image_location: location.to_string(),
    })
}

/// How an AMI is registered (the `register` command and the `--register` of the bundling
/// commands).
#[derive(Debug, Clone)]
pub struct AmiOptions {
    /// AMI description.
    pub description: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: String,
    /// Root device name.
    pub root_device_name: String,
    /// ENA.
    pub ena_support: bool,
    /// SR-IOV "simple" networking.
    pub sriov_net_support: bool,
    /// Tags on the AMI.
    pub tags: Vec<(String, String)>,
    /// Deregister an AMI of the same name registered from another location.
    pub force: bool,
    /// Wait for `available`.
    pub wait: bool,
}

/// A bundle in S3 to register.
#[derive(Debug, Clone)]
pub struct RegisterTarget {
    /// `bucket/prefix/name.manifest.xml`.
    pub image_location: String,
    /// AMI name.
    pub name: String,
    /// From the manifest.
    pub architecture: String,
    /// PV kernel.
    pub kernel_id: Option<String>,
    /// PV ramdisk.
    pub ramdisk_id: Option<String>,
}

impl RegisterTarget {
    /// The bundle whose manifest is `manifest`, stored at `image_location`, registered as
    /// `name` (default: the bundle's name) with the manifest's architecture (i386 when it
    /// names none, as the 2007-10-10 format's default). No PV kernel or ramdisk.
    pub fn for_manifest(
        manifest: &crate::bundle::manifest::Manifest,
        image_location: String,
        name: Option<String>,
    ) -> Self {
        RegisterTarget {
            image_location,
            name: name.unwrap_or_else(|| manifest.image.name.clone()),
            architecture: manifest
                .machine
                .as_ref()
                .map_or_else(|| "i386".into(), |m| m.architecture.clone()),
            kernel_id: None,
            ramdisk_id: None,
        }
    }
}

/// Registers `target` (idempotently, [`register_image`]) and, if `ami.wait`, waits for
/// `available` ([`wait_available`], [`WAIT_TIMEOUT_SECS`]). Returns the request made and its
/// result.
pub async fn register_and_wait(
    client: &Client,
    region: &str,
    target: RegisterTarget,
    ami: &AmiOptions,
) -> Result<(RegisterRequest, Registered), Ec2Error> {
    validate_ami_name(&target.name)?;
    if ami.virtualization_type == "hvm" {
        tracing::info!("registering as HVM (EC2's own default would be paravirtual)");
    }
    let req = RegisterRequest {
        image_location: target.image_location,
        name: target.name,
        description: ami.description.clone(),
        architecture: target.architecture,
        virtualization_type: ami.virtualization_type.clone(),
        root_device_name: ami.root_device_name.clone(),
        ephemeral_mappings: default_ephemeral_mappings(),
        ena_support: ami.ena_support,
        sriov_net_support: ami.sriov_net_support,
        kernel_id: target.kernel_id,
        ramdisk_id: target.ramdisk_id,
        tags: ami.tags.clone(),
        force: ami.force,
    };
    let registered = register_image(client, region, &req).await?;
    if ami.wait {
        wait_available(
            client,
            region,
            &registered.image_id,
            Duration::from_secs(WAIT_TIMEOUT_SECS),
        )
        .await?;
    }
    Ok((req, registered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_names_follow_ec2_rules() {
        for ok in [
            "web",
            "web-2026-01 (v2) [prod] @x_y/z.'q'",
            &"a".repeat(128),
        ] {
            validate_ami_name(ok).unwrap();
        }
        for bad in ["ab", &"a".repeat(129), "bad*name", "tab\there", "naïve"] {
            let err = validate_ami_name(bad).unwrap_err().to_string();
            assert!(err.contains("--name"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_described_instance_store_ami_is_read_for_copying() {
        use aws_sdk_ec2::types::{
            DeviceType, EbsBlockDevice, VirtualizationType, builders::ImageBuilder,
        };
        let base = || -> ImageBuilder {
            Image::builder()
                .image_id("ami-1")
                .name("web")
                .description("web server")
                .architecture(ArchitectureValues::Arm64)
                .virtualization_type(VirtualizationType::Paravirtual)
                .root_device_name("/dev/xvda1")
                .root_device_type(DeviceType::InstanceStore)
                .ena_support(true)
                .sriov_net_support("simple")
                .kernel_id("aki-1")
                .ramdisk_id("ari-1")
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name("/dev/sdb")
                        .virtual_name("ephemeral0")
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name("/dev/sdf")
                        .ebs(EbsBlockDevice::builder().volume_size(8).build())
                        .build(),
                )
        };
        let with_location = base().image_location("b/p/web.manifest.xml").build();
        let s = source_image(&with_location, "ami-1", "eu-west-1").unwrap();
        assert_eq!(
            s,
            SourceImage {
                image_id: "ami-1".into(),
                name: "web".into(),
                description: Some("web server".into()),
                architecture: Some("arm64".into()),
                virtualization_type: Some("paravirtual".into()),
                root_device_name: Some("/dev/xvda1".into()),
                ephemeral_mappings: vec![("/dev/sdb".into(), "ephemeral0".into())],
                other_mappings: vec!["/dev/sdf".into()],
                ena_support: true,
                sriov_net_support: true,
                kernel_id: Some("aki-1".into()),
                ramdisk_id: Some("ari-1".into()),
                image_location: "b/p/web.manifest.xml".into(),
            }
        );
        // Without ImageLocation (emulators), our tag says where the bundle is.
        let tagged = base()
            .tags(
                Tag::builder()
                    .key(LOCATION_TAG)
                    .value("t/web.manifest.xml")
                    .build(),
            )
            .build();
        let s = source_image(&tagged, "ami-1", "eu-west-1").unwrap();
        assert_eq!(s.image_location, "t/web.manifest.xml");
        // Neither: an EBS-backed AMI, refused naming it and its region.
        let ebs = base().root_device_type(DeviceType::Ebs).build();
        let err = source_image(&ebs, "ami-1", "eu-west-1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ami-1") && err.contains("eu-west-1") && err.contains("ebs"),
            "{err}"
        );
    }

    #[test]
    fn ephemeral_defaults_are_the_classic_four() {
        assert_eq!(
            default_ephemeral_mappings(),
            [
                ("/dev/sdb", "ephemeral0"),
                ("/dev/sdc", "ephemeral1"),
                ("/dev/sdd", "ephemeral2"),
                ("/dev/sde", "ephemeral3")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
