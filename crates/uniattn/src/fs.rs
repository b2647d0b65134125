//! Writing files and folders so that a failure (a full disk, an interrupted run) never leaves a
//! half-written result under the final name, and never touches what was read.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// An output folder written as a whole: everything goes to a hidden staging folder beside it,
/// which replaces `--out` only when [`OutputDir::commit`] is called. Dropped without a commit,
/// the staging folder is removed and `--out` is as it was.
pub struct OutputDir {
    target: PathBuf,
    staging: Option<tempfile::TempDir>,
}

impl OutputDir {
    /// Checks `target` before any work is done: it must not be (or contain, or lie inside) one of
    /// `sources`, and must be empty or absent unless `overwrite`.
    pub fn prepare(target: &Path, overwrite: bool, sources: &[&Path]) -> Result<Self> {
        let abs = absolute(target)?;
        for s in sources {
            let Ok(src) = std::fs::canonicalize(s) else { continue };
            if abs.starts_with(&src) || src.starts_with(&abs) {
                return Err(Error::invalid(format!(
                    "refusing to write {} over the model it reads ({}): choose another output folder",
                    target.display(),
                    s.display()
                )));
            }
        }
        if abs.is_file() {
            return Err(Error::invalid(format!("{} is a file, expected an output folder", target.display())));
        }
        let non_empty = std::fs::read_dir(&abs).map(|mut d| d.next().is_some()).unwrap_or(false);
        if non_empty && !overwrite {
            return Err(Error::invalid(format!(
                "{} exists and is not empty; choose a new folder or pass --overwrite to replace it",
                target.display()
            )));
        }
        let parent = abs.parent().ok_or_else(|| Error::invalid("the output folder has no parent"))?;
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = abs.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().to_string());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        Ok(OutputDir { target: abs, staging: Some(staging) })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        self.staging.as_ref().expect("staging folder until commit").path()
    }

    /// Puts the written folder in place of the target (an old target is removed after the rename).
    pub fn commit(mut self) -> Result<PathBuf> {
        let staging = self.staging.take().expect("staging folder until commit").keep();
        let old = self.target.exists().then(|| {
            let mut o = staging.clone().into_os_string();
            o.push(".old");
            PathBuf::from(o)
        });
        if let Some(o) = &old {
            std::fs::rename(&self.target, o).map_err(|e| Error::io(&self.target, e))?;
        }
        if let Err(e) = std::fs::rename(&staging, &self.target) {
            if let Some(o) = &old {
                let _ = std::fs::rename(o, &self.target);
            }
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::io(&self.target, e));
        }
        if let Some(o) = old {
            std::fs::remove_dir_all(&o).map_err(|e| Error::io(&o, e))?;
        }
        Ok(self.target.clone())
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
    // Resolve symlinks of the part that exists, so that two names of one folder compare equal.
    match (abs.parent().and_then(|d| std::fs::canonicalize(d).ok()), abs.file_name()) {
        (Some(dir), Some(name)) => Ok(dir.join(name)),
        _ => Ok(abs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_names_the_file_and_leaves_nothing() {
        let p = Path::new("/proc/uniattn-cannot-write/model.safetensors");
        let err = write_atomic(p, b"x").unwrap_err().to_string();
        assert!(err.contains("uniattn-cannot-write"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("a.json"), b"{}").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn an_output_folder_replaces_the_target_only_on_commit() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        // Absent: written and committed.
        let o = OutputDir::prepare(&out, false, &[]).unwrap();
        std::fs::write(o.path().join("a"), b"1").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"1");
        // Non-empty: refused without --overwrite, and nothing is touched.
        let err = OutputDir::prepare(&out, false, &[]).err().unwrap().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        // With overwrite, a dropped (failed) write leaves the old folder as it was.
        let o = OutputDir::prepare(&out, true, &[]).unwrap();
        std::fs::write(o.path().join("b"), b"2").unwrap();
        drop(o);
        assert!(out.join("a").exists() && !out.join("b").exists());
        // A committed one replaces the old folder whole: no leftover files from before.
        let o = OutputDir::prepare(&out, true, &[]).unwrap();
        std::fs::write(o.path().join("b"), b"2").unwrap();
        o.commit().unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")], "no staging folders left");
    }

    #[test]
    fn the_source_model_is_never_the_output() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        for out in [model.clone(), model.join("sub"), root.path().to_path_buf(), model.join("../model")] {
            let err = OutputDir::prepare(&out, true, &[&model]).err().unwrap().to_string();
            assert!(err.contains("over the model it reads"), "{}: {err}", out.display());
        }
        let file = model.join("config.json");
        let err = OutputDir::prepare(&file, true, &[]).err().unwrap().to_string();
        assert!(err.contains("is a file"), "{err}");
    }
}
