//! libtorch's profiler (Kineto over CUPTI, cuda/train.cpp): `uniattn train --profile` records
//! optimizer steps with it and `uniattn bench --trace` replayed decode steps, each as a Chrome
//! trace that shows where a step's GPU time goes (`scripts/device/trace_summary.py`).
use super::{call, shim};
use crate::error::Result;
use std::ffi::CString;
use std::path::Path;

/// libtorch's profiler (CPU operators and CUDA kernels) while it lives; [`Profiler::save`]
/// writes what it recorded as a Chrome trace (open it in Perfetto or chrome://tracing).
pub struct Profiler {
    running: bool,
}

impl Profiler {
    pub fn start() -> Result<Self> {
        let s = shim()?;
        // SAFETY: only the error buffer is passed.
        call("profiler start", |e, n| unsafe { (s.profiler_start)(e, n) })?;
        Ok(Profiler { running: true })
    }

    pub fn save(mut self, path: &Path) -> Result<()> {
        self.running = false;
        let s = shim()?;
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            crate::error::Error::invalid(format!("{}: a path with a NUL byte", path.display()))
        })?;
        // SAFETY: a valid C string and error buffer.
        call("profiler stop", |e, n| unsafe { (s.profiler_stop)(c.as_ptr(), e, n) })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let (true, Ok(s)) = (self.running, shim()) {
            // SAFETY: a null path (drop the recording) and a valid error buffer.
            let _ = call("profiler stop", |e, n| unsafe { (s.profiler_stop)(std::ptr::null(), e, n) });
        }
    }
}
