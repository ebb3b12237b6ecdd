//! Finding a device without a panic, a hang or driver noise: the CUDA driver is
//! probed by hand before cubecl's CUDA runtime is touched (it panics inside a device
//! thread when `libcuda` is missing or `cuInit` fails), and Vulkan adapters are
//! listed before cubecl's wgpu runtime is asked for one (it panics when none fits).
#![allow(unsafe_code)]

use cubecl::wgpu::{AutoGraphicsApi, GraphicsApi, WgpuDevice};

type CuInit = unsafe extern "C" fn(u32) -> i32;
type CuCount = unsafe extern "C" fn(*mut i32) -> i32;
type CuGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
type CuName = unsafe extern "C" fn(*mut u8, i32, i32) -> i32;

/// Opens `libcuda`, initialises it, counts its devices and names device 0 (or says
/// why it cannot). The library stays loaded (cubecl's runtime loads it again, by
/// the same name, and finds it ready).
pub fn cuda() -> Result<String, String> {
    // SAFETY: loading the system's CUDA driver runs its initialisers, as any CUDA
    // program does; the two symbols are looked up with the driver API's signatures
    // (`CUresult cuInit(unsigned)`, `cuDeviceGetCount(int*)`, `cuDeviceGet(CUdevice*,
    // int)`, `cuDeviceGetName(char*, int, CUdevice)`), called with valid arguments
    // (the name into a zeroed buffer of the length given), and the library is never unloaded while they may run.
    unsafe {
        let lib = ["libcuda.so.1", "libcuda.so"]
            .iter()
            .find_map(|&name| libloading::Library::new(name).ok())
            .ok_or("the CUDA driver library (libcuda.so.1) is not installed")?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit\0").map_err(|e| format!("libcuda: {e}"))?;
        match init(0) {
            0 => {}
            100 => return Err("the CUDA driver is installed but sees no device (cuInit: no device)".into()),
            rc => return Err(format!("the CUDA driver failed to start (cuInit returned {rc})")),
        }
        let count: libloading::Symbol<CuCount> = lib.get(b"cuDeviceGetCount\0").map_err(|e| format!("libcuda: {e}"))?;
        let mut devices = 0;
        if count(&mut devices) != 0 || devices == 0 {
            return Err("the CUDA driver sees no device".into());
        }
        let get: libloading::Symbol<CuGet> = lib.get(b"cuDeviceGet\0").map_err(|e| format!("libcuda: {e}"))?;
        let name: libloading::Symbol<CuName> = lib.get(b"cuDeviceGetName\0").map_err(|e| format!("libcuda: {e}"))?;
        let (mut device, mut buf) = (0i32, [0u8; 256]);
        let named = get(&mut device, 0) == 0 && name(buf.as_mut_ptr(), buf.len() as i32 - 1, device) == 0;
        let len = buf.iter().position(|&c| c == 0).unwrap_or(0);
        let label = if named { String::from_utf8_lossy(&buf[..len]).into_owned() } else { "device 0".into() };
        std::mem::forget(lib);
        Ok(if devices > 1 { format!("{label} (device 0 of {devices})") } else { label })
    }
}

/// Points `XDG_RUNTIME_DIR` at a private per-user directory when it is unset or not
/// a directory: Mesa's Vulkan drivers otherwise print `XDG_RUNTIME_DIR is invalid`
/// on standard error from C, past any log filter. Call before any thread starts.
pub fn quiet_vulkan() {
    let fine = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    if fine {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("bdh-xdg-{user}"));
    let made = std::fs::create_dir_all(&dir).is_ok() && {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
    };
    if made {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// A Vulkan (Metal on macOS) adapter that cubecl's wgpu runtime can open.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// Its name, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// How cubecl's runtime names it (its kind and its index among that kind).
    pub device: WgpuDevice,
    /// Whether it is a software device running on the CPU (lavapipe).
    pub software: bool,
}

/// The adapters of the backend cubecl uses here, best first (discrete, integrated,
/// virtual, software). Without a Vulkan loader or driver the list is empty.
pub fn adapters() -> Vec<Adapter> {
    let backend = <AutoGraphicsApi as GraphicsApi>::backend();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut seen = [0usize; 4];
    let mut found: Vec<(usize, Adapter)> = cubecl::future::block_on(instance.enumerate_adapters(backend.into()))
        .into_iter()
        .filter_map(|a| {
            let info = a.get_info();
            let (rank, kind): (usize, fn(usize) -> WgpuDevice) = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => (0, WgpuDevice::DiscreteGpu),
                wgpu::DeviceType::IntegratedGpu => (1, WgpuDevice::IntegratedGpu),
                wgpu::DeviceType::VirtualGpu => (2, WgpuDevice::VirtualGpu),
                wgpu::DeviceType::Cpu => (3, |_| WgpuDevice::Cpu),
                wgpu::DeviceType::Other => return None,
            };
            seen[rank] += 1;
            let device = kind(seen[rank] - 1);
            Some((rank, Adapter { name: info.name, device, software: rank == 3 }))
        })
        .collect();
    found.sort_by_key(|(rank, _)| *rank);
    // cubecl opens the first software adapter only.
    let mut software = 0;
    found.retain(|(rank, _)| {
        *rank < 3 || {
            software += 1;
            software == 1
        }
    });
    found.into_iter().map(|(_, a)| a).collect()
}
