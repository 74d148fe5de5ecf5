//! Building the filesystem image for `bundle-vol`: the faithful tree copy that fills a mounted
//! image from a live root filesystem or any directory ([`copy`]), the sensitive-file filter
//! that decides what the copy leaves out ([`filter`]) and `--generalize` ([`generalize`]).

pub mod copy;
pub mod filter;
pub mod generalize;
mod root;
