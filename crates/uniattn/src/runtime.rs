//! Start-up checks for libtorch: the loaded library must be the 2.11 release that `tch =0.24.0`
//! binds, and `libtorch_cuda.so` must be loaded explicitly (with `--as-needed` linking nothing
//! pulls it in, and CUDA then silently reports unavailable).
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// The libtorch release this build binds.
pub const EXPECTED_TORCH: &str = "2.11.";

/// Where the process loaded `libtorch_cpu.so` from, read off `/proc/self/maps`.
fn loaded_torch_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// The version of a libtorch folder: `build-version` in a libtorch zip layout or the project's
/// set-up, `version.py` next to `lib/` in a pip wheel layout.
fn version_of(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(s) = std::fs::read_to_string(root.join("build-version")) {
        return Some(s.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    py.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// Checks the loaded libtorch's version and loads its CUDA backend when present.
/// Returns a one-line description for logs.
pub fn init() -> Result<String> {
    // Touch libtorch so that it is mapped before we look for it.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
    let dir = loaded_torch_lib_dir().ok_or_else(|| {
        Error::invalid("libtorch_cpu.so is not loaded; set LD_LIBRARY_PATH (see scripts/setup.sh)")
    })?;
    let version = version_of(&dir).ok_or_else(|| {
        Error::invalid(format!(
            "cannot tell the version of libtorch in {} (no build-version or ../version.py)",
            dir.display()
        ))
    })?;
    if !version.starts_with(EXPECTED_TORCH) {
        return Err(Error::invalid(format!(
            "libtorch in {} is version {version}, but this build of uniattn needs {EXPECTED_TORCH}x (tch 0.24.0)",
            dir.display()
        )));
    }
    let cuda = load_cuda(&dir);
    Ok(format!(
        "libtorch {version} ({}), CUDA {}",
        dir.display(),
        if cuda { "available" } else { "unavailable" }
    ))
}

fn load_cuda(dir: &Path) -> bool {
    let lib = dir.join("libtorch_cuda.so");
    if !lib.exists() {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(lib.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: dlopen with a valid C string; the handle is deliberately kept for the process life.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null() && tch::Cuda::is_available()
}

/// `auto` picks CUDA when available.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(Error::invalid("--device cuda: no CUDA device is available"))
            }
        }
        s => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) if (i as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(i)),
            _ => Err(Error::invalid(format!(
                "--device {s}: expected auto, cpu, cuda or cuda:N with an existing N"
            ))),
        },
    }
}

/// The name of the device for tables: the GPU's product name, or "CPU (N threads)".
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(_) => std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "CUDA GPU".into()),
        _ => format!("CPU ({} threads)", tch::get_num_threads()),
    }
}

static SHUTDOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if SHUTDOWN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // A second signal: stop now, without waiting for the graceful shutdown.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) }
    }
}

/// Blocks until SIGINT or SIGTERM arrives (a server then shuts down gracefully); a second
/// one ends the process at once, and so does `deadline` passing after the first.
pub fn wait_for_shutdown_signal_with_deadline(deadline: std::time::Duration) {
    wait_for_shutdown_signal();
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("shutdown: requests still running after {deadline:?}; exiting");
        std::process::exit(1);
    });
}

/// Blocks until SIGINT or SIGTERM arrives (a server then shuts down gracefully; a second
/// signal ends the process at once).
pub fn wait_for_shutdown_signal() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    while !SHUTDOWN.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
