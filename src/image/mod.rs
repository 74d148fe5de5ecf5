//! Building the filesystem image for `bundle-vol`: the image file and its filesystem
//! ([`fs`]), the loop device it is attached to ([`loopdev`]), the private mounts of the image
//! and of the source volume ([`mount`]), and the faithful tree copy that fills the image from a
//! live root filesystem or any directory ([`copy`]).

pub mod copy;
pub mod fs;
pub mod loopdev;
pub mod mount;

#[cfg(test)]
mod testing;
