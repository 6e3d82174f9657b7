//! Device memory: what the adapter has (Vulkan's largest device-local heap, read through
//! wgpu-hal; wgpu itself has no query, gfx-rs/wgpu#2447) or `WGDIT_VRAM_BUDGET`, and what wgdit's
//! own buffers hold (every `Buffer` carries an [`Allocation`] that gives its bytes back on drop).

use super::Gpu;
use crate::budget;
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The bytes of one live buffer, counted in its device's total while any handle exists.
#[derive(Debug)]
pub(super) struct Allocation {
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Allocation {
    pub(super) fn new(bytes: u64, held: &Arc<AtomicU64>) -> Arc<Allocation> {
        held.fetch_add(bytes, Ordering::Relaxed);
        Arc::new(Allocation { bytes, held: held.clone() })
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The device memory figure a plan is checked against.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DeviceMemory {
    /// Bytes wgdit may use, if known.
    pub total: Option<u64>,
    /// Where `total` comes from.
    pub source: &'static str,
}

/// The adapter's largest device-local heap (Vulkan only).
#[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
pub(super) fn adapter_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (memory properties), never destroyed or used for work.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: the physical device belongs to this instance and outlives the call.
    let props = unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    props
        .memory_heaps_as_slice()
        .iter()
        .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .max()
}

#[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd")))]
pub(super) fn adapter_memory(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}

/// `WGDIT_VRAM_BUDGET` if set, else the adapter's device-local memory; a CPU adapter's memory is
/// the host's (lavapipe reports a 2 GiB heap whatever the machine has).
pub(super) fn device_memory(adapter: &wgpu::Adapter) -> Result<DeviceMemory> {
    if let Some(b) = budget::env_budget(budget::VRAM_ENV)? {
        return Ok(DeviceMemory { total: Some(b), source: budget::VRAM_ENV });
    }
    if adapter.get_info().device_type == wgpu::DeviceType::Cpu {
        return Ok(match budget::host_available()? {
            Some((b, _)) => DeviceMemory { total: Some(b), source: "host memory (a CPU adapter)" },
            None => DeviceMemory { total: None, source: "not reported (a CPU adapter)" },
        });
    }
    Ok(match adapter_memory(adapter) {
        Some(b) => DeviceMemory { total: Some(b), source: "the adapter's device-local heap" },
        None => DeviceMemory { total: None, source: "not reported by this backend" },
    })
}

impl Gpu {
    /// The device memory plans are checked against.
    pub fn device_memory(&self) -> DeviceMemory {
        self.memory
    }

    /// Bytes held by wgdit's live buffers on this device.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Refuses a plan of `need` more device bytes for `what` that would exceed the device memory
    /// (when known); `advice` says what to change.
    pub fn check_device_fits(&self, need: u64, what: &str, advice: &str) -> Result<()> {
        let Some(total) = self.memory.total else { return Ok(()) };
        let held = self.held_bytes();
        if held.saturating_add(need) > total {
            return Err(budget::device_error(what, need, held, total, self.memory.source, advice));
        }
        Ok(())
    }
}
