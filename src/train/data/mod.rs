//! Training data: the cached-sample dataset format and its validation ([`dataset`]), seeded
//! resumable batching ([`batch`]) and built-in synthetic datasets ([`synthetic`]).

pub mod batch;
pub mod dataset;
pub mod synthetic;

pub use batch::{Batch, Batcher, BatcherState};
pub use dataset::{Collated, Dataset, Sample, SampleInfo, ShapeKey, METADATA};
pub use synthetic::{write_synthetic, write_synthetic_with, LatentKind};
