//! `train --nproc-per-node` (and `convert`'s) as a user starts it, on a machine without GPUs:
//! the launcher starts the ranks (this same binary, told their place), each says why it cannot
//! run here, and the launcher names the failing rank and stops, within seconds and without
//! writing a run.
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn multi_gpu_training_where_there_are_no_gpus_says_why() {
    no_gpus_says_why(&["train", "--model", "smollm2", "--data", "rows.json"], "metrics.jsonl");
}

/// `convert --nproc-per-node` (calibration spread over the ranks) the same way.
#[test]
fn multi_gpu_conversion_where_there_are_no_gpus_says_why() {
    no_gpus_says_why(&["convert", "smollm2", "--plan", "4:16:33", "--calib", "rows.json"], "config.json");
}

/// Runs `command` over two ranks on the CPU: it must fail naming the reason and the rank,
/// within seconds, and leave no `written` file in its --out.
fn no_gpus_says_why(command: &[&str], written: &str) {
    if tch::Cuda::is_available() {
        return; // here the ranks would run: the GPU machine's dp_check.sh covers that
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let out = dir.path().join("run");
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_uniattn"))
        .args(command)
        .args(["--device", "cpu", "--nproc-per-node", "2"])
        .args(["--master-port", &port, "--out"])
        .arg(&out)
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("starting ranks 0-1 of 2"), "{stdout}");
    assert!(stderr.contains("runs each rank on its own GPU (--device cuda)"), "{stderr}");
    assert!(stderr.contains("exited with status 1"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
    assert!(!out.join(written).exists());
}

/// `--zero` takes stage 0 or 1; anything else is refused before anything starts.
#[test]
fn an_unknown_zero_stage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_uniattn"))
        .args(["train", "--model", "smollm2", "--data", "rows.json", "--zero", "2", "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("--zero") && stderr.contains("0..=1"), "{stderr}");
}
