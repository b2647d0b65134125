//! The experiment driver (`scripts/experiment.py` over `scripts/experiment_medical.sh`) as a
//! user runs it, on SmolLM2 with `experiments/medical/smoke.toml`, through a wrapper of this
//! binary that makes two trainings fail the first time: one as CUDA's out-of-memory does (the
//! driver must go on with it by itself), one otherwise (the driver must finish the rest, exit 1
//! naming it, and a rerun must train only it). Both happened on the GPU machine (2026-12-02).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fails the first `train` into runs/uniattn-s1 as the CLI does when the device runs out of
/// memory (exit status 3) and the first into runs/cla-s1 with another error (1); logs every
/// call's arguments to $WRAP_DIR/calls.
const WRAPPER: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$WRAP_DIR/calls"
if [[ $1 == train ]]; then
  for run in uniattn-s1 cla-s1; do
    if [[ " $* " == *"/runs/$run "* && ! -f $WRAP_DIR/$run.failed ]]; then
      touch "$WRAP_DIR/$run.failed"
      if [[ $run == uniattn-s1 ]]; then
        echo "error: CUDA out of memory (injected by the test)" >&2
        exit 3
      fi
      echo "error: a failure injected by the test" >&2
      exit 1
    fi
  done
fi
exec "$REAL_UNIATTN" "$@"
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run_driver(wrap_dir: &Path, out: &Path) -> (Output, String) {
    let o = Command::new("python3")
        .current_dir(repo_root())
        .args(["scripts/experiment.py", "experiments/medical/smoke.toml", "smollm2", "driver-test", "--out"])
        .arg(out)
        .arg("--uniattn")
        .arg(wrap_dir.join("uniattn"))
        .args(["--set", r#"variants=["dense","uniattn","cla"]"#, "--set", "tasks=medmcqa"])
        .env("WRAP_DIR", wrap_dir)
        .env("REAL_UNIATTN", env!("CARGO_BIN_EXE_uniattn"))
        .output()
        .expect("python3 runs scripts/experiment.py");
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o, log)
}

/// How many `train` calls went into runs/NAME.
fn trainings(calls: &str, name: &str) -> usize {
    calls
        .lines()
        .filter(|c| c.starts_with("train ") && format!("{c} ").contains(&format!("/runs/{name} ")))
        .count()
}

#[test]
fn the_driver_goes_on_after_failed_runs() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("uniattn");
    std::fs::write(&wrapper, WRAPPER).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    let evaluated = |label: &str| out.join("eval").join(format!("{label}.val.json")).is_file();

    // First run: uniattn-s1 runs out of memory and goes on by itself; cla-s1 fails, the rest
    // finishes, and the driver exits 1 naming it.
    let (first, log) = run_driver(dir.path(), &out);
    assert!(!first.status.success(), "{log}");
    assert!(log.contains("uniattn-s1 ran out of GPU memory"), "{log}");
    assert!(log.contains("training of cla-s1 FAILED"), "{log}");
    assert!(log.contains("MISSING: no evaluation of cla-s1"), "{log}");
    for label in ["base", "dense-s1", "uniattn-s1", "uniattn-untrained", "softmax-only-untrained"] {
        assert!(evaluated(label), "{label} not evaluated:\n{log}");
    }
    assert!(!evaluated("cla-s1"));
    let first_attempt = std::fs::read_to_string(out.join("runs/uniattn-s1.out-of-memory.log")).unwrap();
    assert!(first_attempt.contains("CUDA out of memory"), "{first_attempt}");
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("| uniattn-s1 |"));

    // The rerun trains cla-s1 only, evaluates it and succeeds.
    let (second, log) = run_driver(dir.path(), &out);
    assert!(second.status.success(), "{log}");
    assert!(evaluated("cla-s1"), "{log}");
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("| cla-s1 |"));
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    for (run, expected) in [("lr-2e-05", 1), ("uniattn-s1", 2), ("cla-s1", 2)] {
        assert_eq!(trainings(&calls, run), expected, "train calls into runs/{run}:\n{calls}");
    }
}
