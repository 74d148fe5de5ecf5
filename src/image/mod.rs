//! Building the filesystem image for `bundle-vol`: the faithful tree copy that fills a mounted
//! image from a live root filesystem or any directory ([`copy`]) and the sensitive-file filter
//! that decides what the copy leaves out ([`filter`]).

pub mod copy;
pub mod filter;
