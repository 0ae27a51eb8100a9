//! Media: plain code that knows ffmpeg, HLS and the ladder, and nothing of actors, HTTP or the
//! object store.
//!
//! The data's path through this module: [`sniff`] the first bytes, [`probe`] the source with
//! ffprobe, [`ladder::plan`] the renditions, [`transcode`] each rendition into CMAF segments,
//! then write the [`playlist`]s.

pub mod ladder;
pub mod playlist;
pub mod probe;
pub mod sniff;
pub mod transcode;
