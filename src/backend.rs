//! Picking the burn device: burn-wgpu when an adapter exists, else the Flex CPU backend.

use burn::tensor::Device;

/// Which backend the user asked for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum BackendChoice {
    /// burn-wgpu (Vulkan, Metal, DX12), falling back to the CPU when no adapter exists.
    Wgpu,
    /// The pure-Rust CPU backend (burn-flex).
    Cpu,
}

/// The device in use and how it was chosen, for the status bar and logs.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    /// Human-readable name: the adapter, or "CPU (burn-flex)".
    pub description: String,
    /// True when wgpu was asked for but no adapter was found.
    pub fell_back: bool,
}

fn wgpu_adapter() -> Option<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).ok()
}

/// Whether a wgpu adapter exists, asked of wgpu itself (burn-wgpu would panic without one).
pub fn wgpu_adapter_name() -> Option<String> {
    let info = wgpu_adapter()?.get_info();
    Some(format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
}

/// Whether the wgpu adapter runs f16 shaders; `None` without an adapter.
pub fn wgpu_supports_f16() -> Option<bool> {
    Some(wgpu_adapter()?.features().contains(wgpu::Features::SHADER_F16))
}

/// The largest buffer the wgpu adapter allows (burn-wgpu requests the adapter's limits).
pub fn wgpu_max_buffer_bytes() -> Option<u64> {
    let limits = wgpu_adapter()?.limits();
    Some(limits.max_buffer_size.min(limits.max_storage_buffer_binding_size as u64))
}

/// The device for `choice`; asking for wgpu without an adapter logs one warning and gives the CPU.
pub fn select(choice: BackendChoice) -> SelectedDevice {
    match choice {
        BackendChoice::Cpu => cpu(false),
        BackendChoice::Wgpu => match wgpu_adapter_name() {
            Some(name) => SelectedDevice {
                device: Device::wgpu(Default::default()),
                description: format!("wgpu: {name}"),
                fell_back: false,
            },
            None => {
                log::warn!(
                    "No wgpu adapter was found (no GPU driver, or Mesa's lavapipe is not installed); running on the CPU"
                );
                cpu(true)
            }
        },
    }
}

fn cpu(fell_back: bool) -> SelectedDevice {
    SelectedDevice { device: Device::flex(), description: "CPU (burn-flex)".to_string(), fell_back }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_device_has_no_gpu_identity_and_wgpu_has_one() {
        // The pipeline tells GPUs from the CPU by this (f16 and buffer-limit decisions).
        assert!(Device::flex().identity().is_none());
        if wgpu_adapter_name().is_some() {
            assert!(Device::wgpu(Default::default()).identity().is_some());
        } else {
            eprintln!("no wgpu adapter was found; only the CPU half of this test ran");
        }
    }

    #[test]
    fn asking_for_the_cpu_gives_the_cpu() {
        let selected = select(BackendChoice::Cpu);
        assert!(!selected.fell_back);
        assert!(selected.device.identity().is_none());
    }
}

/// Keeps freed memory in the process instead of handing it straight back to the kernel.
///
/// The CPU backend allocates and frees tensors of tens to hundreds of kilobytes on every op;
/// with glibc's defaults many of those go through mmap/munmap and fault their pages in again
/// each time. Raising the thresholds cut a training step of the default model from 0.94 s
/// to 0.78 s on two cores (release build). Call once at start, before other threads exist.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Blocks above this are still mapped on their own (glibc's ceiling for the setting).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        /// Free memory at the top of the heap kept before trimming.
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        /// Extra heap requested per growth, so that steady-state steps don't grow it again.
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes allocator tuning values; it is called before any other
        // thread is started, as glibc asks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
