//! reel's integration tests: one test binary, real nodes on loopback ports, real ffmpeg.
//!
//! Run with `cargo test` (the README's test command). ffmpeg must be installed
//! (`scripts/setup` does it).

mod bad_input;
mod chaos;
mod cluster;
mod crash;
mod e2e;
mod fencing;
mod formats;
mod helpers;
mod hostile;
mod hostile_inputs;
mod players;
mod real_videos;
mod restart;
mod s3;
mod sessions;
mod tus;
mod upload_memory;
