//! `to-ebs`'s workflows: an image file, or a bundle (local or in S3) streamed through the
//! decoder, into a snapshot ([`SnapshotSink`] cuts the image into blocks as it is decoded) and
//! an EBS-backed AMI booting from it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::{
    BLOCK_BYTES, BlockSender, EbsError, SentBlocks, Session, SnapshotOptions, SnapshotReport,
    snapshot_image_file,
};
use crate::bundle::crypto::UserKey;
use crate::bundle::pipeline::DecodeOptions;
use crate::bundle::tar::ImageSink;
use crate::bundle::trust::SignatureCheck;
use crate::cloud::config::CloudConfig;
use crate::cloud::ec2::{self, EbsRegistration, Ec2Error, Registered};
use crate::cloud::unbundle::{self, BundleRef, Remote, UnbundleError};
use crate::progress::Progress;

/// An image made into an EBS-backed AMI (`to-ebs`): the snapshot, then the registration.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// How the snapshot is made.
    pub snapshot: SnapshotOptions,
    /// The AMI to register from it (its `snapshot_id` is filled in; for a bundle, its
    /// architecture comes from the manifest when empty); `None` stops at the snapshot.
    pub register: Option<EbsRegistration>,
    /// Deregister an AMI of the same name booting from something else.
    pub force: bool,
    /// Wait for the AMI to be `available`.
    pub wait: bool,
}

/// What a conversion made.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The snapshot.
    pub snapshot: SnapshotReport,
    /// The AMI, when one was registered.
    pub registered: Option<Registered>,
    /// Wall time of the registration (and its wait).
    pub register_time: Duration,
}

/// Why an image was not made into an EBS-backed AMI.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The snapshot.
    #[error(transparent)]
    Snapshot(#[from] EbsError),
    /// The registration.
    #[error(transparent)]
    Register(#[from] Ec2Error),
    /// Reading, checking or decoding the bundle.
    #[error(transparent)]
    Bundle(#[from] UnbundleError),
    /// The image has no partition table or no boot code: an HVM EBS root must be a whole,
    /// bootable disk.
    #[error(
        "{0} is a bare filesystem or has no boot code (no partition table and boot sector): it \
         cannot boot as the root of an EBS-backed (HVM) AMI. Pass --partition to send a \
         partitioned copy with GRUB 2 instead (made in --work-dir, as root), save the server \
         again as a partitioned image (amibundle bundle-vol -P mbr), or pass --no-register to \
         keep only the snapshot (a data volume)"
    )]
    NotBootable(String),
    /// The image could not be inspected.
    #[error("reading the boot sector of {path}")]
    Inspect {
        /// The image.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl ConvertError {
    /// Permission problems (exit code 3).
    pub fn is_access_problem(&self) -> bool {
        match self {
            ConvertError::Snapshot(e) => e.is_access_problem(),
            _ => false,
        }
    }
}

/// Whether the first two sectors of a disk (`head`, at least 1,024 bytes) can start an HVM
/// boot: boot code in the first 440 bytes, and a partition table as bundle-vol's detection reads
/// it (`partition::table_style`: a GPT header at LBA 1, or an MBR signature).
pub fn check_boot_sector(head: &[u8]) -> bool {
    head.len() >= 1024
        && head[..440].iter().any(|&b| b != 0)
        && crate::image::partition::table_style(head, 512).is_some()
}

/// [`check_boot_sector`] of the image file at `path`.
pub fn check_bootable_disk(path: &Path) -> Result<(), ConvertError> {
    let what = path.display().to_string();
    let mut head = [0u8; 1024];
    let read = File::open(path).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                got => n += got,
            }
        }
        Ok(n)
    });
    match read {
        Ok(_) if check_boot_sector(&head) => Ok(()),
        Ok(_) => Err(ConvertError::NotBootable(what)),
        Err(source) => Err(ConvertError::Inspect { path: what, source }),
    }
}

/// A taken AMI name fails before anything is sent (unless `force`).
fn check_name(
    runtime: &Handle,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    conversion: &Conversion,
) -> Result<(), ConvertError> {
    if let (Some(register), false) = (&conversion.register, conversion.force) {
        runtime.block_on(ec2::refuse_taken_name(ec2, region, &register.name))?;
    }
    Ok(())
}

/// Registers (and waits for) the AMI of `conversion` booting from `snapshot`.
fn register(
    runtime: &Handle,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    conversion: &Conversion,
    snapshot: SnapshotReport,
    architecture: Option<&str>,
) -> Result<Converted, ConvertError> {
    let Some(template) = &conversion.register else {
        return Ok(Converted {
            snapshot,
            registered: None,
            register_time: Duration::ZERO,
        });
    };
    let started = Instant::now();
    let mut req = EbsRegistration {
        snapshot_id: snapshot.snapshot_id.clone(),
        ..template.clone()
    };
    if req.architecture.is_empty() {
        req.architecture = architecture.unwrap_or("x86_64").to_string();
    }
    let registered = runtime.block_on(async {
        let registered = ec2::register_ebs_image(ec2, region, &req, conversion.force).await?;
        if conversion.wait {
            ec2::wait_available(
                ec2,
                region,
                &registered.image_id,
                Duration::from_secs(ec2::WAIT_TIMEOUT_SECS),
            )
            .await?;
        }
        Ok::<_, Ec2Error>(registered)
    })?;
    Ok(Converted {
        snapshot,
        registered: Some(registered),
        register_time: started.elapsed(),
    })
}

/// Makes the image file at `path` into a snapshot in `region` and, as `conversion` asks,
/// registers an AMI booting from it. An image to register is checked first
/// ([`check_bootable_disk`], a name not taken).
pub fn convert_image_file(
    runtime: &Handle,
    cloud: &CloudConfig,
    region: &str,
    path: &Path,
    conversion: &Conversion,
    progress: &dyn Progress,
) -> Result<Converted, ConvertError> {
    let ebs = cloud.ebs_client(region);
    let ec2 = cloud.ec2_client(region);
    if conversion.register.is_some() {
        check_bootable_disk(path)?;
    }
    check_name(runtime, &ec2, region, conversion)?;
    let (snapshot, session) = snapshot_image_file(
        runtime,
        &ebs,
        &ec2,
        region,
        path,
        &conversion.snapshot,
        progress,
    )?;
    // A registration that fails leaves the journal saying the snapshot is complete: the rerun
    // goes straight to registering it.
    let converted = register(runtime, &ec2, region, conversion, snapshot, None)?;
    session.close()?;
    Ok(converted)
}

/// Makes the image of `bundle` (a local one, or one in S3 with `remote`) into a snapshot while
/// it is decoded (nothing written locally), after its signature is checked with `check`, and
/// registers an AMI as `conversion` asks (architecture from the manifest unless given). The
/// snapshot is completed only once the whole bundle checked out (every part's SHA-1, the tar
/// digest); any failure deletes it.
#[allow(clippy::too_many_arguments)]
pub fn convert_bundle(
    runtime: &Handle,
    cloud: &CloudConfig,
    region: &str,
    bundle: &BundleRef,
    remote: Option<Remote<'_>>,
    key: &UserKey,
    check: &SignatureCheck,
    allow_oversize: bool,
    conversion: &Conversion,
    progress: &dyn Progress,
) -> Result<Converted, ConvertError> {
    let ebs = cloud.ebs_client(region);
    let ec2 = cloud.ec2_client(region);
    check_name(runtime, &ec2, region, conversion)?;
    let session = Session::open(
        runtime.clone(),
        ebs,
        ec2.clone(),
        conversion.snapshot.clone(),
        &format!("{region} bundle {}", bundle_key(bundle)),
    )?;
    let mut sink = SnapshotSink::new(
        session,
        conversion.register.is_some().then(|| bundle.describe()),
    );
    let opened = match unbundle::open(bundle, remote, key, check) {
        Ok(opened) => opened,
        Err(e) => {
            sink.session.abandon(crate::interrupt::signal().is_some());
            return Err(e.into());
        }
    };
    let architecture = opened
        .manifest
        .machine
        .as_ref()
        .map(|m| m.architecture.clone());
    let options = DecodeOptions {
        allow_oversize,
        ..DecodeOptions::default()
    };
    let finished = match sink
        .session
        .completed_before(Some(opened.manifest.image.size))
    {
        Ok(Some(done)) => Ok(done),
        Ok(None) => match opened.decode(key, options, Some(&mut sink), progress) {
            Ok(_) => sink.finish(),
            Err(e) => Err(sink
                .take_failure()
                .map_or(ConvertError::Bundle(e), Into::into)),
        },
        Err(e) => Err(e.into()),
    };
    let snapshot = match finished {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let resumable = match &e {
                ConvertError::Snapshot(e) => e.is_resumable(),
                _ => crate::interrupt::signal().is_some(),
            };
            sink.session.abandon(resumable);
            return Err(e);
        }
    };
    let converted = register(
        runtime,
        &ec2,
        region,
        conversion,
        snapshot,
        architecture.as_deref(),
    )?;
    sink.session.close()?;
    Ok(converted)
}

/// What names a bundle across runs: its manifest's address in S3, or its manifest's canonical
/// path.
fn bundle_key(bundle: &BundleRef) -> String {
    match bundle {
        BundleRef::Local { manifest, .. } => std::fs::canonicalize(manifest)
            .unwrap_or_else(|_| manifest.clone())
            .display()
            .to_string(),
        BundleRef::S3 { .. } => bundle.describe(),
    }
}

/// An [`ImageSink`] that cuts the image into 512 KiB blocks as it arrives and sends them into
/// the snapshot of a [`Session`] ([`BlockSender`]): started (or resumed) when the first block is
/// complete (after checking that the image can boot, when `check_boot` names it), holes and
/// blocks of zeros never sent. The first EBS failure is kept ([`SnapshotSink::take_failure`])
/// so the caller reports it rather than the decode error it caused.
pub struct SnapshotSink {
    session: Session,
    /// The image's name, when it must be bootable.
    check_boot: Option<String>,
    size: u64,
    sender: Option<BlockSender>,
    /// The block being filled and its index.
    block: Vec<u8>,
    index: Option<u64>,
    failure: Option<ConvertError>,
}

impl SnapshotSink {
    /// A sink for the snapshot of `session`.
    pub fn new(session: Session, check_boot: Option<String>) -> Self {
        SnapshotSink {
            session,
            check_boot,
            size: 0,
            sender: None,
            block: Vec::new(),
            index: None,
            failure: None,
        }
    }

    /// The snapshot started, if any.
    pub fn snapshot_id(&self) -> Option<&str> {
        self.session.snapshot_id()
    }

    /// The failure that stopped the sink.
    pub fn take_failure(&mut self) -> Option<ConvertError> {
        self.failure.take()
    }

    /// Keeps `e` as the failure and turns it into the I/O error the decoder expects.
    fn fail(&mut self, e: ConvertError) -> io::Error {
        let message = crate::bundle::error_chain(&e);
        self.failure = Some(e);
        io::Error::other(message)
    }

    /// Sends the block being filled (if any).
    fn flush(&mut self) -> Result<(), ConvertError> {
        let Some(index) = self.index.take() else {
            return Ok(());
        };
        let block = std::mem::take(&mut self.block);
        if self.sender.is_none() {
            if let Some(name) = &self.check_boot {
                // The first block written holds the boot sector only if it is block 0.
                if index != 0 || !check_boot_sector(&block) {
                    return Err(ConvertError::NotBootable(name.clone()));
                }
            }
            self.sender = Some(self.session.start(self.size.max(1))?);
        }
        if let Some(sender) = &mut self.sender {
            sender.send(index, block)?;
        }
        Ok(())
    }

    /// Sends the last block, waits for all, and completes the snapshot. An image whose blocks
    /// are all zeros still gets its (empty) snapshot.
    fn finish(&mut self) -> Result<SnapshotReport, ConvertError> {
        self.flush()?;
        if self.sender.is_none() {
            // Nothing but zeros: no boot sector, or an empty (all-zero) data volume.
            if let Some(name) = &self.check_boot {
                return Err(ConvertError::NotBootable(name.clone()));
            }
            self.sender = Some(self.session.start(self.size.max(1))?);
        }
        let Some(sender) = self.sender.take() else {
            return Err(EbsError::Empty("the image".into()).into());
        };
        let sent: SentBlocks = sender.finish()?;
        Ok(self.session.complete(&sent)?)
    }
}

impl ImageSink for SnapshotSink {
    fn begin(&mut self, size: u64) -> io::Result<()> {
        self.size = size;
        Ok(())
    }

    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        crate::interrupt::check()?;
        while !data.is_empty() {
            let index = offset / BLOCK_BYTES as u64;
            if self.index != Some(index) {
                if let Err(e) = self.flush() {
                    return Err(self.fail(e));
                }
                self.index = Some(index);
                self.block.clear();
                self.block.resize(BLOCK_BYTES, 0);
            }
            let at = (offset % BLOCK_BYTES as u64) as usize;
            let take = (BLOCK_BYTES - at).min(data.len());
            self.block[at..at + take].copy_from_slice(&data[..take]);
            offset += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn end(&mut self, _size: u64) -> io::Result<()> {
        // The last block is sent by `finish`, once the digest checked out.
        Ok(())
    }
}
