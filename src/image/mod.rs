//! Building the filesystem image for `bundle-vol`: the faithful tree copy that fills a mounted
//! image from a live root filesystem or any directory ([`copy`]), the sensitive-file filter
//! that decides what the copy leaves out ([`filter`]), `--generalize` ([`generalize`]) and the
//! image's `/etc/fstab` ([`fstab`]).

pub mod copy;
pub mod filter;
pub mod fstab;
pub mod generalize;
mod root;
