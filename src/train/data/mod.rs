//! Training data: the cached-sample dataset format and its validation ([`dataset`]), seeded
//! resumable batching ([`batch`]) and built-in synthetic datasets ([`synthetic`]); the picture
//! datasets `wgdit cache` reads ([`sources`], with [`csv`] for DiffSynth's metadata.csv) and its
//! aspect-ratio buckets and crops ([`buckets`]).

pub mod batch;
pub mod buckets;
pub mod csv;
pub mod dataset;
pub mod sources;
pub mod synthetic;

pub use batch::{Batch, Batcher, BatcherState};
pub use dataset::{cache_areas, Bucket, Collated, Dataset, Sample, SampleInfo, ShapeKey, METADATA};
pub use synthetic::{write_synthetic, write_synthetic_with, LatentKind};
