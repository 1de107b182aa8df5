//! Generated from `proto/parley.proto`.

// Generated code is not ours to lint; prost and tonic emit a few patterns
// clippy dislikes (large enum variants, doc formatting).
#[allow(clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("parley.v1");
}

pub use generated::*;

/// Encoded descriptor set, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("parley_descriptor");
