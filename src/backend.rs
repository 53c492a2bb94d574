//! Picking the burn device: burn-wgpu when an adapter exists, else the Flex CPU backend.

use burn::tensor::Device;

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
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

/// Whether a wgpu adapter exists, asked of wgpu itself (burn-wgpu would panic without one).
pub fn wgpu_adapter_name() -> Option<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).ok()?;
    let info = adapter.get_info();
    Some(format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
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
                log::warn!("No wgpu adapter was found (no GPU driver, or Mesa's lavapipe is not installed); running on the CPU");
                cpu(true)
            }
        },
    }
}

fn cpu(fell_back: bool) -> SelectedDevice {
    SelectedDevice { device: Device::flex(), description: "CPU (burn-flex)".to_string(), fell_back }
}
