//! Building the filesystem image for `bundle-vol`: today the faithful tree copy that fills a
//! mounted image from a live root filesystem or any directory (see [`copy`]).

pub mod copy;
