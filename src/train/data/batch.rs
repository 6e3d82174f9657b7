//! Seeded, resumable batching of the samples of one bucket (equal image shapes; prompts are
//! padded in `Dataset::collate`).

use super::dataset::Dataset;
use crate::rng::Rng;
use crate::{Error, Result};

/// Where a [`Batcher`] stands: the next batch is number `position` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatcherState {
    pub epoch: u64,
    pub position: usize,
}

/// One batch: sample indices of one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u64,
    pub position: usize,
    pub samples: Vec<usize>,
}

/// Yields batches of up to `max_batch` samples of one bucket. Each epoch shuffles the
/// samples inside each shape group, cuts the groups into batches and shuffles the batch order,
/// all from an `Rng` seeded by (seed, epoch) alone, so any (epoch, position) can be resumed.
#[derive(Clone, Debug)]
pub struct Batcher {
    groups: Vec<Vec<usize>>,
    max_batch: usize,
    seed: u64,
    state: BatcherState,
    order: Vec<Vec<usize>>,
}

impl Batcher {
    pub fn new(dataset: &Dataset, max_batch: usize, seed: u64) -> Batcher {
        Batcher::from_groups(dataset.groups(), max_batch, seed)
    }

    /// From explicit shape groups (sample indices), e.g. for tests.
    pub fn from_groups(groups: Vec<Vec<usize>>, max_batch: usize, seed: u64) -> Batcher {
        assert!(max_batch >= 1, "batcher: batch size must be at least 1");
        let mut b = Batcher { groups, max_batch, seed, state: BatcherState::default(), order: Vec::new() };
        b.order = b.epoch_order(0);
        b
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.groups.iter().map(|g| g.len().div_ceil(self.max_batch)).sum()
    }

    pub fn state(&self) -> BatcherState {
        self.state
    }

    /// Continues from a saved position.
    pub fn resume(&mut self, state: BatcherState) -> Result<()> {
        // the epoch after the last one would overflow in `next` (fuzz target train_state)
        if state.epoch == u64::MAX {
            return Err(Error::input(format!("data epoch {} is not an epoch a run can reach", state.epoch)));
        }
        if state.position > self.batches_per_epoch() {
            return Err(Error::input(format!(
                "data position {} is past the {} batches of an epoch (was the dataset or batch size changed?)",
                state.position,
                self.batches_per_epoch()
            )));
        }
        self.state = state;
        self.order = self.epoch_order(state.epoch);
        Ok(())
    }

    /// The batch order of one epoch.
    pub fn epoch_order(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17));
        let mut batches = Vec::new();
        for g in &self.groups {
            let mut g = g.clone();
            shuffle(&mut g, &mut rng);
            batches.extend(g.chunks(self.max_batch).map(<[usize]>::to_vec));
        }
        shuffle(&mut batches, &mut rng);
        batches
    }
}

impl Iterator for Batcher {
    type Item = Batch;
    /// Never ends (epochs follow each other); `None` only for an empty dataset.
    fn next(&mut self) -> Option<Batch> {
        if self.order.is_empty() {
            return None;
        }
        if self.state.position >= self.order.len() {
            self.state = BatcherState { epoch: self.state.epoch + 1, position: 0 };
            self.order = self.epoch_order(self.state.epoch);
        }
        let s = self.state;
        self.state.position += 1;
        Some(Batch { epoch: s.epoch, position: s.position, samples: self.order[s.position].clone() })
    }
}

/// Fisher–Yates.
fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}
