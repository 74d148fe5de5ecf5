//! The single integration-test binary: drives the real `amibundle` binary and checks bundles
//! against the reference test vectors and against an independent decoder made of standard tools.

mod support;

mod bad_input;
mod bundle_vol;
mod cli;
mod cloud;
mod compat;
mod concurrent;
mod copy;
mod crash;
mod disk_full;
mod docsgen;
mod ebs;
mod ebs_boot;
mod ebs_read;
mod ebs_resume;
mod faults;
mod golden;
mod imds;
mod independent;
mod netmodel;
mod restore;
mod save;
mod secrets;
mod streaming;
mod support_selftest;
mod vectors;
