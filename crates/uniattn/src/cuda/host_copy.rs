//! Copies from the GPU that the host reads later without emptying the GPU's queue: a decode
//! step's greedy picks are copied into pinned memory behind the step, the next step is queued
//! behind the copy, and only then does the host wait for the copy (an event), so the GPU runs
//! the next step while the host handles this one's tokens.
use super::{call, shim};
use crate::error::{Error, Result};
use std::ffi::{c_int, c_void};
use tch::{Device, Kind, Tensor};

/// Pinned host memory for `capacity` int64 values.
pub struct PinnedI64 {
    ptr: *mut c_void,
    capacity: usize,
}

// SAFETY: plain host memory owned by this value; reads happen only after the copy into it
// was waited for (`Copying::wait`), which takes the buffer by value or by `&mut`.
unsafe impl Send for PinnedI64 {}
unsafe impl Sync for PinnedI64 {}

impl PinnedI64 {
    pub fn new(capacity: usize) -> Result<Self> {
        let s = shim()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer and error buffer.
        call("pinned host memory", |e, n| unsafe { (s.host_alloc)(capacity.max(1) * 8, &mut ptr, e, n) })?;
        Ok(PinnedI64 { ptr, capacity })
    }

    /// Queues a copy of `src` (int64, contiguous, on CUDA device `device`, at most `capacity`
    /// values) behind the work on the device's current stream; [`Copying::wait`] returns them.
    pub fn copy_from(self, src: &Tensor, device: usize) -> Result<Copying> {
        let n = src.numel();
        if src.kind() != Kind::Int64
            || !src.is_contiguous()
            || src.device() != Device::Cuda(device)
            || n > self.capacity
        {
            return Err(Error::invalid(format!(
                "an asynchronous copy takes at most {} contiguous int64 values on cuda:{device}, got {:?} {:?} on {:?}",
                self.capacity,
                src.kind(),
                src.size(),
                src.device()
            )));
        }
        let s = shim()?;
        let mut event = std::ptr::null_mut();
        // SAFETY: `src` holds `n` int64 values on the device; `self.ptr` holds `capacity` >= n;
        // the buffer is not read until the event has happened (`Copying::wait`).
        call("copy to the host", |e, len| unsafe {
            (s.copy_to_host_async)(device as c_int, src.data_ptr(), self.ptr, n * 8, &mut event, e, len)
        })?;
        Ok(Copying { buffer: Some(self), event, len: n })
    }
}

impl Drop for PinnedI64 {
    fn drop(&mut self) {
        if let Ok(s) = shim() {
            // SAFETY: memory from ua_host_alloc, freed once; no copy into it is in flight (a
            // `Copying` owns its buffer and waits before giving it back or dropping it).
            unsafe { (s.host_free)(self.ptr) };
        }
    }
}

/// A copy into pinned memory in flight.
pub struct Copying {
    /// Taken back by [`Copying::wait`].
    buffer: Option<PinnedI64>,
    event: *mut c_void,
    len: usize,
}

// SAFETY: the event and the buffer are owned by this value and used from one thread at a time.
unsafe impl Send for Copying {}

impl Copying {
    /// Blocks until the copy is done; returns the values and the buffer for the next copy.
    pub fn wait(mut self) -> Result<(Vec<i64>, PinnedI64)> {
        self.finish()?;
        let buffer = self.buffer.take().expect("taken only here");
        // SAFETY: the copy into the first `len` values has completed (the event has happened).
        let values = unsafe { std::slice::from_raw_parts(buffer.ptr as *const i64, self.len) }.to_vec();
        Ok((values, buffer))
    }

    fn finish(&mut self) -> Result<()> {
        if self.event.is_null() {
            return Ok(());
        }
        let s = shim()?;
        let event = std::mem::replace(&mut self.event, std::ptr::null_mut());
        // SAFETY: an event from ua_copy_to_host_async, waited for and destroyed once.
        call("copy to the host", |e, n| unsafe { (s.event_wait)(event, e, n) })
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        // The buffer must not be freed while the copy into it may still run.
        let _ = self.finish();
    }
}
