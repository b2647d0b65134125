//! Records libtorch's folder as the binaries' run path, so that they start without
//! LD_LIBRARY_PATH (a GPU machine's LD_LIBRARY_PATH still takes precedence over it).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}
