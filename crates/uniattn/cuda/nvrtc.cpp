// Custom kernels at run time: CUDA C source (kernels.cu, handed over by src/cuda/kernels.rs)
// compiled through NVRTC for the device's architecture, loaded as a context-independent CUDA
// library, and launched on torch's current stream, so that they order with libtorch's kernels
// and are captured into CUDA graphs like them. NVRTC is opened with dlopen: the build needs no
// CUDA compiler, and a machine without NVRTC still runs everything else.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "shim.h"

namespace {

using uniattn_shim::check;
using uniattn_shim::guarded;

// The NVRTC entry points used here (nvrtc.h's signatures; the handle is opaque).
using nvrtcProgram = void*;
struct Nvrtc {
  int (*create)(nvrtcProgram*, const char*, const char*, int, const char* const*, const char* const*);
  int (*compile)(nvrtcProgram, int, const char* const*);
  int (*log_size)(nvrtcProgram, size_t*);
  int (*log)(nvrtcProgram, char*);
  int (*cubin_size)(nvrtcProgram, size_t*);
  int (*cubin)(nvrtcProgram, char*);
  int (*destroy)(nvrtcProgram*);
  const char* (*error)(int);
};

// Folders of the CUDA libraries libtorch already loaded: pip's wheels keep NVRTC beside them
// (nvidia/cu13/lib), and a CUDA toolkit keeps it beside libcudart.
int collect_dir(struct dl_phdr_info* info, size_t, void* data) {
  auto* dirs = static_cast<std::vector<std::string>*>(data);
  std::string path = info->dlpi_name ? info->dlpi_name : "";
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return 0;
  std::string dir = path.substr(0, slash), base = path.substr(slash + 1);
  if (base.rfind("libcublas", 0) == 0 || base.rfind("libcudart", 0) == 0) dirs->push_back(dir);
  if (base.rfind("libtorch_cuda", 0) == 0) dirs->push_back(dir + "/../../nvidia/cu13/lib");
  return 0;
}

void* open_nvrtc(std::string& tried) {
  std::vector<std::string> names;
  if (const char* env = std::getenv("UNIATTN_NVRTC")) names.push_back(env);
  names.push_back("libnvrtc.so.13");
  std::vector<std::string> dirs;
  dl_iterate_phdr(collect_dir, &dirs);
  for (const auto& d : dirs) names.push_back(d + "/libnvrtc.so.13");
  for (const auto& n : names) {
    if (void* h = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    tried += (tried.empty() ? "" : ", ") + n;
  }
  return nullptr;
}

Nvrtc load_nvrtc() {
  std::string tried;
  void* h = open_nvrtc(tried);
  if (h == nullptr) {
    throw std::runtime_error("NVRTC (libnvrtc.so.13) not found; tried " + tried +
                             " (set UNIATTN_NVRTC to its path)");
  }
  auto sym = [&](const char* name) {
    void* p = dlsym(h, name);
    if (p == nullptr) throw std::runtime_error(std::string("NVRTC lacks ") + name);
    return p;
  };
  Nvrtc n;
  n.create = reinterpret_cast<decltype(n.create)>(sym("nvrtcCreateProgram"));
  n.compile = reinterpret_cast<decltype(n.compile)>(sym("nvrtcCompileProgram"));
  n.log_size = reinterpret_cast<decltype(n.log_size)>(sym("nvrtcGetProgramLogSize"));
  n.log = reinterpret_cast<decltype(n.log)>(sym("nvrtcGetProgramLog"));
  n.cubin_size = reinterpret_cast<decltype(n.cubin_size)>(sym("nvrtcGetCUBINSize"));
  n.cubin = reinterpret_cast<decltype(n.cubin)>(sym("nvrtcGetCUBIN"));
  n.destroy = reinterpret_cast<decltype(n.destroy)>(sym("nvrtcDestroyProgram"));
  n.error = reinterpret_cast<decltype(n.error)>(sym("nvrtcGetErrorString"));
  return n;
}

// `device`'s architecture: "sm_90".
std::string architecture(int device) {
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return "sm_" + std::to_string(major) + std::to_string(minor);
}

// Compiles `source` to a cubin for `sm` (an architecture, "sm_90").
std::vector<char> compile(const char* source, const std::string& sm) {
  static const Nvrtc nvrtc = load_nvrtc();
  nvrtcProgram prog = nullptr;
  auto ok = [&](int r, const char* what) {
    if (r != 0) throw std::runtime_error(std::string(what) + ": " + nvrtc.error(r));
  };
  ok(nvrtc.create(&prog, source, "uniattn_kernels.cu", 0, nullptr, nullptr), "nvrtcCreateProgram");
  std::string arch = "--gpu-architecture=" + sm;
  const char* opts[] = {arch.c_str(), "--std=c++17"};
  int r = nvrtc.compile(prog, 2, opts);
  if (r != 0) {
    size_t n = 0;
    nvrtc.log_size(prog, &n);
    std::string log(n, '\0');
    nvrtc.log(prog, log.data());
    nvrtc.destroy(&prog);
    throw std::runtime_error(std::string("compiling the kernels for ") + arch + " failed: " + log);
  }
  size_t n = 0;
  ok(nvrtc.cubin_size(prog, &n), "nvrtcGetCUBINSize");
  std::vector<char> cubin(n);
  ok(nvrtc.cubin(prog, cubin.data()), "nvrtcGetCUBIN");
  nvrtc.destroy(&prog);
  return cubin;
}

// A cached cubin loaded, or false (no file, unreadable, or one the driver refuses).
bool load_cached(const std::string& path, cudaLibrary_t* lib) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.empty() || cudaLibraryLoadData(lib, data.data(), nullptr, nullptr, 0, nullptr, nullptr, 0) != cudaSuccess) {
    cudaGetLastError();  // the failed load is not this thread's error from here on
    return false;
  }
  return true;
}

// Writes `cubin` to `path` through a file of this process renamed into place, so that another
// process reads the whole cubin or none; a cache that cannot be written is left as it is.
void store_cached(const std::string& path, const std::vector<char>& cubin) {
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !out.write(cubin.data(), static_cast<std::streamsize>(cubin.size()))) {
      std::remove(tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) std::remove(tmp.c_str());
}

}  // namespace

extern "C" {

// Compiles and loads `source`; the library serves every device of the same architecture, whose
// compute capability (90 for sm_90) goes to `capability`: which of a kernel's forms runs.
// `cache` (null: none) is a path prefix: the cubin is `<cache>-<sm_XY>.cubin`, loaded from there
// when it loads (no compile: NVRTC takes seconds for these kernels), else compiled and stored.
int ua_kernels_load(const char* source, const char* cache, int device, void** library, int* capability, char* err,
                    size_t len) {
  return guarded(err, len, [&] {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    const std::string sm = architecture(device);
    *capability = std::stoi(sm.substr(3));
    const std::string path = cache != nullptr ? std::string(cache) + "-" + sm + ".cubin" : "";
    cudaLibrary_t lib = nullptr;
    if (!path.empty() && load_cached(path, &lib)) {
      *library = lib;
      return;
    }
    auto cubin = compile(source, sm);
    check(cudaLibraryLoadData(&lib, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
    if (!path.empty()) store_cached(path, cubin);
    *library = lib;
  });
}

int ua_kernel_get(void* library, const char* name, void** kernel, char* err, size_t len) {
  return guarded(err, len, [&] {
    cudaKernel_t k = nullptr;
    check(cudaLibraryGetKernel(&k, static_cast<cudaLibrary_t>(library), name));
    *kernel = k;
  });
}

// Past 48 KiB of dynamic shared memory a kernel must opt in, before its launch and before the
// occupancy calculator counts its blocks (which finds none otherwise), once for each size it
// grows to on a device (the setting holds for the process; this thread remembers what it set).
// Kernels under the limit (most launches) never look it up.
static void opt_in_shared(void* kernel, int device, unsigned shared_bytes) {
  if (shared_bytes <= 48 * 1024) return;
  thread_local std::map<std::pair<void*, int>, unsigned> opted_in;
  unsigned& opted = opted_in[{kernel, device}];
  if (shared_bytes > opted) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
    opted = shared_bytes;
  }
}

// Blocks of `kernel` (`block` threads, `shared_bytes` of dynamic shared memory) that fit on
// `device` at once, over all its SMs.
int ua_kernel_resident_blocks(void* kernel, int device, unsigned block, unsigned shared_bytes, int* blocks,
                              char* err, size_t len) {
  return guarded(err, len, [&] {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    opt_in_shared(kernel, device, shared_bytes);
    int per_sm = 0, sms = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(kernel),
                                                         static_cast<int>(block), shared_bytes));
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    *blocks = per_sm * sms;
  });
}

// Launches `kernel` on `device`'s current torch stream; `args` points at each argument's value.
// `programmatic`: the launch may begin while the stream's previous kernel finishes (programmatic
// dependent launch, kept as such in a captured graph; on Hopper and later, a plain launch
// before): the kernel must read nothing the previous kernels write before its
// `griddepcontrol.wait`.
int ua_kernel_launch(void* kernel, int device, unsigned grid, unsigned block, unsigned shared_bytes,
                     int programmatic, void** args, char* err, size_t len) {
  return guarded(err, len, [&] {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
    opt_in_shared(kernel, device, shared_bytes);
    int major = 0;
    if (programmatic) check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major < 9) {
      check(cudaLaunchKernel(kernel, dim3(grid), dim3(block), args, shared_bytes, stream));
      return;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(block);
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    check(cudaLaunchKernelExC(&config, kernel, args));
  });
}

}  // extern "C"
