//! Records libtorch's folder as the binaries' run path, so that they start without
//! LD_LIBRARY_PATH (a GPU machine's LD_LIBRARY_PATH still takes precedence over it), and
//! compiles the CUDA shim (cuda/*.cpp: graphs, and the launcher of the NVRTC-compiled kernels)
//! into a shared library that the crate embeds and loads only where CUDA is available
//! (libtorch_cuda cannot load without a driver).
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM_SOURCES: &[&str] = &["cuda/graphs.cpp", "cuda/nvrtc.cpp", "cuda/train.cpp"];

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    for f in SHIM_SOURCES.iter().chain(&["cuda/shim.h"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rustc-check-cfg=cfg(uniattn_cuda_shim)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let shim = out.join("libuniattn_cuda.so");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        std::fs::write(&shim, b"").expect("write placeholder");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    let lt = Path::new(&libtorch);
    let cuda_include = lt.join("cuda-include");
    if !lt.join("lib/libtorch_cuda.so").exists() || !cuda_include.join("cuda_runtime_api.h").exists() {
        println!("cargo:warning=CUDA graphs and fused kernels disabled: {} has no libtorch_cuda.so or cuda-include/ (scripts/setup.sh unpacks the headers)", lt.display());
        std::fs::write(&shim, b"").expect("write placeholder");
        return;
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&cxx)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-std=c++17",
            "-D_GLIBCXX_USE_CXX11_ABI=1",
            "-DGLOG_USE_GLOG_EXPORT",
        ])
        .arg(format!("-I{}", lt.join("include").display()))
        .arg(format!("-I{}", lt.join("include/torch/csrc/api/include").display()))
        .arg(format!("-I{}", cuda_include.display()))
        .args(SHIM_SOURCES)
        .arg(format!("-L{}", lt.join("lib").display()))
        .args([
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-ltorch_cpu",
            "-lc10",
            "-l:libcudart.so.13",
            "-ldl",
        ])
        .args(["-Wl,--allow-shlib-undefined", "-o"])
        .arg(&shim)
        .status()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    assert!(status.success(), "compiling the CUDA shim (cuda/*.cpp) failed");
    println!("cargo:rustc-cfg=uniattn_cuda_shim");
}
