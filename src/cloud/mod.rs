//! Talking to AWS: S3 buckets and objects, EC2 image registration, instance metadata. Async
//! (tokio) because it is network I/O; the bundle engine itself stays synchronous.

pub mod config;
pub mod copy;
pub mod ebs;
pub mod ec2;
pub mod imds;
pub mod publish;
pub mod s3;
pub(crate) mod stream;
pub mod unbundle;
