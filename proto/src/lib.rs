//! `t2v-proto`: the t2v.v1 wire contracts and nothing else. The `.proto` files in
//! `proto/t2v/v1/` are the source of truth; every field documents its unit and bounds there.
//! Other crates convert to their own types at their edges; what they agree on beyond the wire
//! types (bounds, header keys and values, defaults) lives in t2v-contract.
//!
//! # Layout
//! - [`v1`]: prost types for `GenerationRequest`, `GenerationEvent`, `ControlCommand` and friends.
//! - [`FILE_DESCRIPTOR_SET`] / [`descriptor_pool`]: the compiled descriptors (with comments), for the
//!   protobuf JSON mapping, JSON Schema generation and the compatibility check.

/// Generated from `proto/t2v/v1/*.proto`.
#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/t2v.v1.rs"));
}

/// The encoded `FileDescriptorSet` of the t2v.v1 package (source info included).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/t2v_v1_descriptor.bin"));

/// The descriptor pool of the t2v.v1 package, decoded once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled by build.rs decodes")
    })
}
