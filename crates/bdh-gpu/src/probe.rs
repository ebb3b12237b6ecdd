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
type CuTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;

/// The CUDA device 0 the driver sees.
#[derive(Clone, Debug)]
pub struct Cuda {
    /// Its name, e.g. "NVIDIA H200" (with "device 0 of K" when there are several).
    pub name: String,
    /// Its memory, in bytes.
    pub memory: u64,
}

/// Opens `libcuda`, initialises it, names device 0 and sizes its memory, then
/// checks what cubecl's CUDA runtime needs to compile kernels — NVRTC, and a CUDA
/// folder with `include/` — or says what is missing.
pub fn cuda() -> Result<Cuda, String> {
    let device = driver()?;
    nvrtc()?;
    if cubecl::cuda::install::cuda_path().is_none_or(|p| !p.join("include/cuda.h").is_file()) {
        return Err(format!(
            "the driver sees {} but there is no CUDA folder with the headers NVRTC compiles against \
             (include/cuda.h): set CUDA_PATH to the CUDA toolkit (or to the folder site-packages/nvidia/cu13 of \
             PyTorch's wheels)",
            device.name
        ));
    }
    Ok(device)
}

/// Whether NVRTC, the CUDA runtime compiler, can be loaded by a name cudarc tries.
fn nvrtc() -> Result<(), String> {
    // SAFETY: loading NVRTC runs only its initialisers; it is closed again at once
    // (cudarc opens it itself to compile).
    let found = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]
        .iter()
        .any(|&name| unsafe { libloading::Library::new(name) }.is_ok());
    if found {
        return Ok(());
    }
    Err("the CUDA driver works but NVRTC (libnvrtc.so, from the CUDA toolkit, or from PyTorch's wheels in \
         site-packages/nvidia/cu13/lib) is not on the library path: add its folder to LD_LIBRARY_PATH"
        .into())
}

/// The driver's device 0, or why there is none. The driver library, once loaded,
/// stays loaded (cubecl's runtime opens it again by the same name and finds it ready).
fn driver() -> Result<Cuda, String> {
    // SAFETY: loading the system's CUDA driver runs its initialisers, as any CUDA
    // program does; it is never unloaded. The symbols are looked up with the driver
    // API's signatures (`CUresult cuInit(unsigned)`, `cuDeviceGetCount(int*)`,
    // `cuDeviceGet(CUdevice*, int)`, `cuDeviceGetName(char*, int, CUdevice)`,
    // `cuDeviceTotalMem_v2(size_t*, CUdevice)`) and called with valid pointers (the
    // name into a zeroed buffer one longer than the length given).
    unsafe {
        let lib = ["libcuda.so.1", "libcuda.so"]
            .iter()
            .find_map(|&name| libloading::Library::new(name).ok())
            .ok_or("the CUDA driver library (libcuda.so.1) is not installed")?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        let init: CuInit = *lib.get::<CuInit>(b"cuInit\0").map_err(|e| format!("libcuda: {e}"))?;
        match init(0) {
            0 => {}
            100 => return Err("the CUDA driver is installed but sees no device (cuInit: no device)".into()),
            rc => return Err(format!("the CUDA driver failed to start (cuInit returned {rc})")),
        }
        let count: CuCount = *lib.get::<CuCount>(b"cuDeviceGetCount\0").map_err(|e| format!("libcuda: {e}"))?;
        let mut devices = 0;
        if count(&mut devices) != 0 || devices == 0 {
            return Err("the CUDA driver sees no device".into());
        }
        let get: CuGet = *lib.get::<CuGet>(b"cuDeviceGet\0").map_err(|e| format!("libcuda: {e}"))?;
        let name: CuName = *lib.get::<CuName>(b"cuDeviceGetName\0").map_err(|e| format!("libcuda: {e}"))?;
        let total: CuTotalMem =
            *lib.get::<CuTotalMem>(b"cuDeviceTotalMem_v2\0").map_err(|e| format!("libcuda: {e}"))?;
        let (mut device, mut buf, mut memory) = (0i32, [0u8; 256], 0usize);
        let found = get(&mut device, 0) == 0;
        let named = found && name(buf.as_mut_ptr(), buf.len() as i32 - 1, device) == 0;
        let len = buf.iter().position(|&c| c == 0).unwrap_or(0);
        let label = if named { String::from_utf8_lossy(&buf[..len]).into_owned() } else { "device 0".into() };
        let name = if devices > 1 { format!("{label} (device 0 of {devices})") } else { label };
        if !(found && total(&mut memory, device) == 0) {
            return Err(format!("the CUDA driver does not report the memory of {name}"));
        }
        Ok(Cuda { name, memory: memory as u64 })
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
    let _ = std::fs::create_dir(&dir);
    // Only a real folder of this process's user, closed to others (not a link, not
    // another user's folder planted under the name).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && Some(m.uid()) == me && m.permissions().mode() & 0o077 == 0);
    if ours {
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
