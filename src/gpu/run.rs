//! Binding and encoding dispatches. A [`Launch`] is what a kernel launcher returns; the executor
//! binds each launch once ([`Bound`]) and re-encodes the bound list on every run, updating only
//! small uniform parameters in between.

use super::{gpu_err, Access, Buffer, Gpu, Kernel};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Dispatches per submission of [`Gpu::submit`]: execution of one chunk overlaps the encoding
/// of the next (docs/decisions.md, "Submissions in chunks").
pub const SUBMIT_CHUNK: usize = 128;

/// One dispatch request: a kernel, its uniform parameter bytes (bound to the shader's
/// `var<uniform>` if it has one), its storage buffers in binding order, and the workgroup grid.
#[derive(Clone, Debug)]
pub struct Launch {
    pub kernel: Arc<Kernel>,
    pub params: Vec<u8>,
    pub buffers: Vec<Buffer>,
    pub groups: [u32; 3],
}

/// A queue submission, to wait for ([`Gpu::wait_for`]).
#[derive(Clone, Debug)]
pub struct Submission(wgpu::SubmissionIndex);

/// GPU timestamp pairs written around submitted passes ([`Gpu::submit_stamped`]).
#[derive(Debug)]
pub struct Stamps {
    set: wgpu::QuerySet,
    count: u32,
}

/// A launch with its bind group and uniform buffer built. Re-encode it as often as needed.
#[derive(Debug)]
pub struct Bound {
    pub kernel: Arc<Kernel>,
    pub groups: [u32; 3],
    group: wgpu::BindGroup,
    params: Option<wgpu::Buffer>,
}

impl Gpu {
    /// Builds the bind group (and uniform buffer) of a launch.
    pub fn bind(&self, l: &Launch) -> Result<Bound> {
        let k = &l.kernel;
        let max = self.limits.max_workgroups_per_dim;
        assert!(
            l.groups.iter().all(|&g| g <= max),
            "kernel {}: grid {:?} exceeds {max} workgroups per dimension",
            k.name,
            l.groups
        );
        let params = k.bindings.iter().any(|b| b.1 == Access::Uniform).then(|| {
            assert!(!l.params.is_empty(), "kernel {}: missing params", k.name);
            let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(k.name),
                size: (l.params.len() as u64).div_ceil(16) * 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.queue.write_buffer(&b, 0, &l.params);
            b
        });
        let mut storage = l.buffers.iter();
        let mut entries = Vec::with_capacity(k.bindings.len());
        for &(binding, access) in &k.bindings {
            let resource = match (access, &params) {
                (Access::Uniform, Some(p)) => p.as_entire_binding(),
                _ => match storage.next() {
                    Some(b) if b.is_whole() => b.inner.as_entire_binding(),
                    // A view (a weight in a streaming ring slot): its range only, within the
                    // binding cap (its arena may be larger; whole buffers were checked when made).
                    Some(b) => {
                        self.check_binding_size(b.size, &format!("kernel {}'s binding {binding}", k.name))?;
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.inner,
                            offset: b.offset,
                            size: std::num::NonZeroU64::new(b.size),
                        })
                    }
                    None => panic!("kernel {}::{}: too few buffers ({})", k.name, k.entry, l.buffers.len()),
                },
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        assert!(storage.next().is_none(), "kernel {}: too many buffers ({})", k.name, l.buffers.len());
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.name),
            layout: &k.layout,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu { context: format!("binding kernel {}", k.name), message: e.to_string() });
        }
        Ok(Bound { kernel: k.clone(), groups: l.groups, group, params })
    }

    /// Replaces the uniform parameters of a bound dispatch (queued before the next submission).
    pub fn set_params(&self, b: &Bound, params: &[u8]) {
        let p = b.params.as_ref().expect("set_params on a kernel without a uniform");
        self.queue.write_buffer(p, 0, params);
    }

    /// Binds and submits the launches ([`submit`](Self::submit)), without waiting.
    pub fn run(&self, launches: &[Launch]) -> Result<()> {
        let bound = launches.iter().map(|l| self.bind(l)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Bound> = bound.iter().collect();
        self.submit(&refs)
    }

    /// Encodes the dispatches in order, in submissions of [`submit_chunk`](Self::submit_chunk)
    /// dispatches each (one compute pass per submission), so that the GPU runs the first while
    /// the rest are encoded. Queue order keeps every dependency; results are bit-identical to
    /// one submission.
    pub fn submit(&self, dispatches: &[&Bound]) -> Result<()> {
        self.submit_stamped(dispatches, None).map(|_| ())
    }

    /// [`submit`](Self::submit), returning the last submission (to wait for) and, with `stamp` =
    /// (set, pair), writing GPU timestamps `2·pair` at the start of the first pass and
    /// `2·pair + 1` at the end of the last.
    pub fn submit_stamped(&self, dispatches: &[&Bound], stamp: Option<(&Stamps, u32)>) -> Result<Submission> {
        let chunk = match self.submit_chunk() {
            0 => dispatches.len().max(1),
            n => n,
        };
        let chunks: Vec<&[&Bound]> = if dispatches.is_empty() { vec![&[]] } else { dispatches.chunks(chunk).collect() };
        let last = chunks.len() - 1;
        let mut index = None;
        for (i, list) in chunks.into_iter().enumerate() {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let timestamp_writes = stamp.filter(|_| i == 0 || i == last).map(|(s, pair)| {
                    debug_assert!(2 * pair + 1 < s.count, "timestamp pair {pair} of {}", s.count / 2);
                    wgpu::ComputePassTimestampWrites {
                        query_set: &s.set,
                        beginning_of_pass_write_index: (i == 0).then_some(2 * pair),
                        end_of_pass_write_index: (i == last).then_some(2 * pair + 1),
                    }
                });
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                for d in list {
                    encode(&mut pass, d);
                }
            }
            index = Some(self.queue.submit([enc.finish()]));
        }
        self.take_uncaptured("submitting dispatches")?;
        // cannot fail: there is at least one chunk
        Ok(Submission(index.expect("one submission")))
    }

    /// Dispatches per submission in [`submit`](Self::submit) (0: all in one). Default
    /// [`SUBMIT_CHUNK`]; docs/decisions.md has the measurement.
    pub fn submit_chunk(&self) -> usize {
        self.submit_chunk.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`submit_chunk`](Self::submit_chunk) (benches compare sizes on one device).
    pub fn set_submit_chunk(&self, dispatches: usize) {
        self.submit_chunk.store(dispatches, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether every submission so far has finished (a non-blocking poll).
    pub fn queue_idle(&self) -> Result<bool> {
        let status = self.device.poll(wgpu::PollType::Poll).map_err(|e| gpu_err("polling the queue", e))?;
        Ok(status.is_queue_empty())
    }

    /// Waits until `s` (and every earlier submission) has finished on the GPU.
    pub fn wait_for(&self, s: &Submission) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(s.0.clone()), timeout: None })
            .map_err(|e| gpu_err("waiting for a submission", e))?;
        self.take_uncaptured("running GPU work")
    }

    /// A set of `pairs` (start, end) timestamp pairs for [`submit_stamped`](Self::submit_stamped),
    /// or `None` when the adapter lacks TIMESTAMP_QUERY or `pairs` exceeds one query set (2048).
    pub fn stamps(&self, pairs: usize) -> Option<Stamps> {
        if !self.caps.timestamp_query || pairs == 0 || pairs > 2048 {
            return None;
        }
        let count = 2 * pairs as u32;
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("stamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        Some(Stamps { set, count })
    }

    /// The (start, end) times of every pair in nanoseconds of one GPU clock (waits for the GPU).
    pub fn read_stamps(&self, s: &Stamps) -> Result<Vec<(f64, f64)>> {
        let bytes = s.count as u64 * 8;
        let resolve = self.buffer_with_usage(bytes, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(&s.set, 0..s.count, &resolve, 0);
        self.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.download(&self.wrap(resolve, bytes))?);
        let period = self.queue.get_timestamp_period() as f64;
        Ok(ticks.chunks(2).map(|t| (t[0] as f64 * period, t[1] as f64 * period)).collect())
    }

    /// Runs the dispatches with a GPU timestamp around each and returns their durations in
    /// nanoseconds, or `None` when the adapter lacks TIMESTAMP_QUERY. Waits for completion.
    pub fn submit_timed(&self, dispatches: &[&Bound]) -> Result<Option<Vec<f64>>> {
        if !self.caps.timestamp_query {
            return Ok(None);
        }
        let period = self.queue.get_timestamp_period() as f64;
        let mut out = Vec::with_capacity(dispatches.len());
        // 2 queries per dispatch; query sets hold at most 4096 queries.
        for chunk in dispatches.chunks(2048) {
            let n = chunk.len() as u32 * 2;
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let resolve =
                self.buffer_with_usage(n as u64 * 8, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let mut enc = self.device.create_command_encoder(&Default::default());
            for (i, d) in chunk.iter().enumerate() {
                let w = wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                };
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.kernel.name),
                    timestamp_writes: Some(w),
                });
                encode(&mut pass, d);
            }
            enc.resolve_query_set(&qs, 0..n, &resolve, 0);
            self.queue.submit([enc.finish()]);
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.download(&self.wrap(resolve, n as u64 * 8))?);
            out.extend(ticks.chunks(2).map(|t| t[1].saturating_sub(t[0]) as f64 * period));
        }
        Ok(Some(out))
    }

    fn buffer_with_usage(&self, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false })
    }
}

fn encode(pass: &mut wgpu::ComputePass<'_>, d: &Bound) {
    pass.set_pipeline(&d.kernel.pipeline);
    pass.set_bind_group(0, &d.group, &[]);
    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
}
